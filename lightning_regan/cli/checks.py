"""Checks that ``regan-train`` runs before importing torch and Lightning, so a wrong input is answered in a second.

Torch-free on purpose (``scripts/bench_cli.py`` measures the answer time): config composition with a did-you-mean
for unknown keys and choices, the types and ranges of the values ``train`` relies on, and the output folders.
Checks that need torch (optimizers, models, data, checkpoints) follow in ``lightning_regan.cli.train``.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lightning_regan.config import drop_unselected, has_target
from lightning_regan.errors import ConfigError
from lightning_regan.validation import is_int, is_number

# Lightning's seed_everything (numpy) accepts seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


def fail(exc: BaseException) -> None:
    """Report a user error in one line on stderr and exit with code 2."""
    print(f"regan-train: error: {one_line(exc)}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- composition
def _groups(conf: Path) -> dict[str, list[str]]:
    """Config groups of ``conf/`` and their options (``{"model": ["dcgan", "mlp", "resnet"], ...}``)."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf).as_posix()] = options
    return groups


def _suggest(word: str, candidates: Sequence[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def compose_checked(overrides: Sequence[str]) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` (and the ``hydra`` node), or raise :class:`ConfigError` in one line.

    Unknown keys and unknown choices get a did-you-mean (``modle=dcgan`` -> "did you mean model?").
    """
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    from lightning_regan.config import compose_config, config_dir

    try:
        return compose_config(overrides, return_hydra_config=True)
    except MissingConfigException as exc:
        missing = str(getattr(exc, "missing_cfg_file", "") or "")
        group, _, choice = missing.rpartition("/")
        options = list(getattr(exc, "options", None) or _groups(config_dir()).get(group, []))
        if not group or not options:
            raise ConfigError(_first_line(exc)) from None
        raise ConfigError(
            f"unknown choice {group}={choice}{_suggest(choice, options)} (options: {', '.join(options)})."
        ) from None
    except OverrideParseException as exc:
        lines = str(exc).splitlines()
        hint = quote_hint(overrides) or " (write key=value)"
        detail = re.sub(r"\s{2,}\^\s*$", "", lines[1]) if len(lines) > 1 else "bad syntax"  # the lexer's caret line
        raise ConfigError(f"{lines[0]}: {detail}{hint}.") from None
    except HydraException as exc:
        match = re.match(r"Could not override '([^']+)'", str(exc))
        if match is None:
            raise ConfigError(_first_line(exc).rstrip(".") + (quote_hint(overrides) or "") + ".") from None
        key = match.group(1)
        rest = [o for o in overrides if not re.match(rf"^[+~]*{re.escape(key)}=", o)]
        try:
            base = compose_config(rest)
        except HydraException:
            base = compose_config([])
        raise ConfigError(_unknown_key(key, overrides, base, config_dir())) from None


_SPECIAL = re.compile(r"[\s'\"\[\](){},=:]")


def quote_hint(overrides: Sequence[str]) -> str:
    """A hint to quote the first override whose value holds spaces or characters of Hydra's grammar (a path such as
    ``/tmp/my dir/x[1].ckpt``), with the spelling that works in a shell; ``""`` when there is none."""
    for override in overrides:
        key, eq, value = override.partition("=")
        if not eq or not value or value[0] in "'\"[{" or not _SPECIAL.search(value) or key.startswith(("hydra/", "~")):
            continue
        if "/" not in value and not re.search(r"\s", value):
            continue  # not a path: a syntax error of its own
        quoted = f"\"{key}='{value}'\"" if "'" not in value else f'"{key}=\\"{value}\\""'
        return f" (quote a path with spaces or special characters for Hydra, inside the shell's quotes: {quoted})"
    return ""


def _unknown_key(key: str, overrides: Sequence[str], base: DictConfig, conf: Path) -> str:
    """The message for an override of a key that is not in the config, with the closest existing key."""
    parts = key.split(".")
    node: Any = base
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        candidates = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        if i == 0:
            groups = _groups(conf)
            value = next((o.split("=", 1)[1] for o in overrides if re.match(rf"^[+~]*{re.escape(key)}=", o)), "")
            # modle=dcgan: the groups that offer the value come first ("did you mean model?").
            offering = [g for g, options in groups.items() if value.strip("[]").split(",")[0] in options]
            candidates = offering if _suggest(part, offering) else [*candidates, *groups]
        close = difflib.get_close_matches(part, candidates, n=1, cutoff=0.6)
        if close:
            return f"unknown key {key}; did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1:]])}?"
        where = f"in {'.'.join(parts[:i])}" if i else "at the top level"
        return f"unknown key {key} (no {part} {where}); to add a new key write +{key}=..."
    return f"cannot override {key}"


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: a Hydra instantiation error as ``<key> (<target>): <reason>``; a message of several
    lines joined (a list of ``- item`` lines becomes ``a, b``)."""
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException):
        text = str(exc)
        key = re.search(r"^full_key: (.+)$", text, re.M)
        target = re.search(r"Error in call to target '([^']+)'", text)
        cause = exc.__cause__
        reason = one_line(cause) if cause is not None else text.splitlines()[-1]
        where = key.group(1) if key else "a config node"
        return f"{where} ({target.group(1) if target else 'instantiate'}): {reason}"
    parts: list[str] = []
    item = False
    for line in (s.strip() for s in str(exc).splitlines()):
        if not line:
            continue
        if line.startswith("- ") and item:
            parts[-1] += f", {line[2:]}"
        else:
            parts.append(line[2:] if line.startswith("- ") else line)
        item = line.startswith("- ")
    joined = ""
    for part in parts:
        joined += part if not joined else (" " if joined[-1] in ".:;!?," else "; ") + part
    return joined or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """For ``--multirun``: override lists that put every value of every sweep through composition once.

    The first variant takes each sweep's first value; each further variant changes one sweep to another value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    firsts, alternatives = [], []
    for i, override in enumerate(parsed):
        if override.is_sweep_override() and not override.is_hydra_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # range/interval sweeps (Optuna): not enumerable, checked by the sweeper
                firsts.append(None)
                continue
            firsts.append(f"{override.get_key_element()}={values[0]}" if values else None)
            alternatives += [(i, f"{override.get_key_element()}={v}") for v in values[1:]]
        else:
            firsts.append(override.input_line)
    base = [o for o in firsts if o is not None]
    variants = [base]
    for i, alt in alternatives:
        variant = list(firsts)
        variant[i] = alt
        variants.append([o for o in variant if o is not None])
    return variants


# ---------------------------------------------------------------------------------------------- values
def need_int(key: str, value: Any, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum``."""
    if not is_int(value) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. {key}={max(minimum, 1)}).")


#: Loggers of the optional trackers, and the package (and extra) each needs.
TRACKER_PACKAGES = {"WandbLogger": "wandb", "MLFlowLogger": "mlflow"}


def check_values(cfg: DictConfig) -> None:
    """Check the types and ranges of the values ``train`` relies on (no torch needed), naming key and type.

    Raises:
        ConfigError: on the first wrong value.
    """
    if cfg.get("seed") is not None:  # null: Lightning's default seed
        need_int("seed", cfg.seed, 0)
        if cfg.seed > MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {cfg.seed}.")
    need_int("max_g_steps", cfg.get("max_g_steps"), 1)
    if "stop_mode" in cfg and cfg.get("stop_mode") not in ("min", "max"):
        raise ConfigError(f"stop_mode must be min (lower is better) or max (higher is better), got "
                          f"{cfg.get('stop_mode')!r} (e.g. stop_mode=max for stop_metric=val/class_accuracy).")
    for name, node in (cfg.get("logger") or {}).items():  # optional trackers: say what to install, before torch
        package = TRACKER_PACKAGES.get(str(node._target_).rsplit(".", 1)[-1]) if has_target(node) else None
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package, which is not installed: "
                              f"pip install 'lightning-regan[{package}]' (or choose logger=csv).")
    module = cfg.get("module") or {}
    need_int("module.n_critic", module.get("n_critic", 1), 1)
    decay = module.get("ema_decay")
    if decay is not None and (not is_number(decay) or not 0 < decay < 1):
        raise ConfigError(
            f"module.ema_decay must be a number in (0, 1) or null (no EMA), got {decay!r} (e.g. module.ema_decay=0.995)."
        )
    need_int("module.ema_start_g_step", module.get("ema_start_g_step", 0), 0)
    need_int("module.num_fixed_samples", module.get("num_fixed_samples", 64), 1)
    need_int("module.freeze_d_layers", module.get("freeze_d_layers", 0), 0)
    try:
        from lightning_regan.compile import compile_options  # torch-free

        compile_options(module.get("compile", False))
    except ValueError as exc:
        raise ConfigError(str(exc).replace("GANModule: compile", "module.compile") + " (e.g. module.compile=true)") from None
    clip = module.get("gradient_clip_val")
    if clip is not None and (not is_number(clip) or clip <= 0):
        raise ConfigError(f"module.gradient_clip_val must be a number > 0 or null, got {clip!r}.")
    for key in ("g_optimizer", "d_optimizer"):
        node = module.get(key)
        if has_target(node):
            lr = node.get("lr")
            if lr is not None and not is_number(lr):
                raise ConfigError(f"module.{key}.lr must be a number, got {lr!r} (e.g. module.{key}.lr=2e-4).")
    model = cfg.get("model") or {}
    if "latent_dim" in model:
        need_int("model.latent_dim", model.latent_dim, 1)
    data = cfg.get("data") or {}
    if "batch_size" in data:
        need_int("data.batch_size", data.batch_size, 1)
    for key in ("fid", "samples"):
        node = (cfg.get("callbacks") or {}).get(key)
        if node is not None:
            need_int(f"callbacks.{key}.every_n_g_steps", node.get("every_n_g_steps", 0), 0)
    fid = (cfg.get("callbacks") or {}).get("fid")
    if has_target(fid):
        # FIDMonitor's own minimums, answered here without torch (the value alone decides).
        for name, minimum in (("num_samples", 2), ("num_real_samples", 2), ("batch_size", 1), ("kid_subset_size", 2),
                              ("kid_subsets", 1), ("pr_k", 1)):
            if fid.get(name) is not None:
                need_int(f"callbacks.fid.{name}", fid.get(name), minimum)
        draws = fid.get("noise_draws", 0)
        if draws is not None and draws != 0:
            need_int("callbacks.fid.noise_draws", draws, 2)
    best = (cfg.get("callbacks") or {}).get("best_generator")
    if has_target(best) and has_target(fid):
        seed = best.get("confirm_seed")
        if seed is not None and seed == fid.get("seed", 0):
            raise ConfigError(f"callbacks.best_generator.confirm_seed={seed} is callbacks.fid.seed: the confirmation "
                              "needs fresh samples; choose another seed (or null: the monitor's seed + 1).")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        raise ConfigError(f"ckpt_path must be a file path, {LAST} or {LAST_REQUIRED}, got {ckpt!r}.")
    if not isinstance(cfg.get("resume_stopped", False), bool):
        raise ConfigError(f"resume_stopped must be true or false, got {cfg.get('resume_stopped')!r}.")
    check_init_from(cfg)
    regs = cfg.get("regularizer") or {}
    for name, node in regs.items():
        if not has_target(node):
            raise ConfigError(f"regularizer.{name} has no _target_; choose regularizers with regularizer=[r1,l2].")
        weight = node.get("weight", 1.0)
        if not is_number(weight) or weight < 0:
            raise ConfigError(f"regularizer.{name}.weight must be a number >= 0 (0 disables the term), got {weight!r}.")
        need_int(f"regularizer.{name}.every", node.get("every", 1), 1)
    if not has_target(cfg.get("data")):
        raise ConfigError("No dataset configured: pick one with data=digits|gaussians|mnist|... .")
    for key in ("generator", "discriminator"):
        if not has_target(model.get(key)):
            raise ConfigError(f"model.{key} needs a _target_; pick an architecture with model=mlp|dcgan|resnet.")


def check_init_from(cfg: DictConfig) -> None:
    """``init_from`` (a file path or null) and ``init_from_parts`` (null or a list of generator, discriminator, ema).

    Raises:
        ConfigError: a wrong type, a missing file, unknown or repeated parts, or parts without ``init_from``.
    """
    from lightning_regan.pretrained import PARTS  # torch-free at import

    source, parts = cfg.get("init_from"), cfg.get("init_from_parts")
    if source is not None and (not isinstance(source, str) or not source):
        raise ConfigError(f"init_from must be a file path (a regan-train checkpoint or a state_dict file), got {source!r}.")
    # With ckpt_path the file may be gone (a resume takes the weights from the checkpoint); train() reads it when
    # the run starts fresh.
    if source is not None and cfg.get("ckpt_path") is None and not Path(source).expanduser().is_file():
        raise ConfigError(
            f"init_from={source!r} does not exist; pass a regan-train checkpoint (e.g. <run>/checkpoints/best.ckpt) "
            "or a torch.save'd state_dict file."
        )
    if parts is None:
        return
    values = list(parts) if isinstance(parts, Sequence) and not isinstance(parts, str) else None
    if values is None or not values or any(p not in PARTS for p in values) or len(set(values)) != len(values):
        raise ConfigError(
            f"init_from_parts must list distinct parts among {', '.join(PARTS)} (or be null for all), got {parts!r} "
            "(e.g. init_from_parts=[generator,discriminator])."
        )
    if source is None:
        raise ConfigError("init_from_parts is set but init_from is not; pass init_from=<checkpoint> (or drop init_from_parts).")


# ---------------------------------------------------------------------------------------------- output folders
def check_writable_dir(key: str, path: str | os.PathLike) -> None:
    """Check that ``path`` is (or can be created as) a writable folder; :class:`ConfigError` naming ``key`` if not.

    Creates nothing: a probe file is written and removed in ``path`` or in its nearest existing parent.
    """
    folder = Path(path).expanduser()
    try:
        os.stat(folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # Path.exists() says False on a loop, and mkdir fails later with a traceback
            raise ConfigError(
                f"{key}={folder} cannot be created: a symbolic link on the way loops ({exc.strerror}); point {key} at "
                "a real folder."
            ) from None
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
        raise ConfigError(f"{key}={folder} {what}, not a folder; point {key} at a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "" if existing == folder else f" (cannot create it in {existing})"
        raise ConfigError(
            f"{key}={folder} is not writable{where}: {exc.strerror or exc}; point {key} at a writable folder."
        ) from None


def check_output_dirs(cfg: DictConfig, multirun: bool) -> None:
    """Check Hydra's run (or sweep) folder and, when set explicitly, ``output_dir``."""
    hydra_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    run_dir = OmegaConf.select(cfg, hydra_key, default=None)
    if run_dir:
        check_writable_dir(hydra_key, run_dir)
    raw = OmegaConf.to_container(cfg, resolve=False).get("output_dir")
    if isinstance(raw, str) and "${" not in raw:
        check_writable_dir("output_dir", raw)


# ---------------------------------------------------------------------------------------------- resuming
#: ``ckpt_path=last``: resume from ``<output_dir>/checkpoints/last.ckpt`` when it exists, else start fresh (said in
#: one line). ``ckpt_path=last_required``: the same, but no checkpoint there is an error (exit code 2), so that a
#: mistyped output folder cannot silently restart a long run.
LAST = "last"
LAST_REQUIRED = "last_required"

#: Config nodes a resumed run must share with the checkpoint's run: they define the networks, the data they
#: were trained on, the losses and the optimizers. Anything else (budget, callbacks, trainer, loggers) may change.
RESUME_NODES = ("model", "data", "loss", "regularizer", "module")
#: Data settings that say where the data is or how it is loaded, not what it is: free to change on resume.
RESUME_FREE_DATA_KEYS = ("root", "data_root", "path", "download", "num_workers", "pin_memory", "persistent_workers",
                         "verify")


def run_output_dir(cfg: DictConfig) -> Optional[Path]:
    """The run's output folder as known before Hydra starts (``output_dir``, or else ``hydra.run.dir``)."""
    raw = OmegaConf.to_container(cfg, resolve=False).get("output_dir")
    if isinstance(raw, str) and "${" not in raw:
        return Path(raw).expanduser()
    try:
        run_dir = OmegaConf.select(cfg, "hydra.run.dir", default=None)
    except Exception:  # an interpolation that only resolves inside the Hydra app
        return None
    return Path(run_dir).expanduser() if run_dir else None


def last_checkpoint(output_dir: str | os.PathLike) -> Path:
    """Where ``ckpt_path=last`` looks: ``<output_dir>/checkpoints/last.ckpt``."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


def missing_last_message(path: Path, required: bool) -> str:
    """The one line for ``ckpt_path=last`` / ``last_required`` when ``path`` does not exist."""
    if required:
        return (f"ckpt_path={LAST_REQUIRED}: no checkpoint at {path}; check output_dir (or hydra.run.dir), or use "
                f"ckpt_path={LAST} to start a fresh run when there is none.")
    return (f"regan-train: ckpt_path={LAST}: no checkpoint at {path}, starting a fresh run (ckpt_path={LAST_REQUIRED} "
            "makes this an error).")


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out or {prefix: {}}
    if isinstance(node, (list, tuple)):
        return {prefix: [v for v in node]}
    return {prefix: node}


def _resume_view(config: Any, node: str) -> dict[str, Any]:
    value = config.get(node) if isinstance(config, dict) else None
    flat = _flatten(value, node) if value is not None else {}
    if node == "data":
        flat = {k: v for k, v in flat.items() if k.split(".")[1] not in RESUME_FREE_DATA_KEYS}
    return flat


def config_differences(stored: dict[str, Any], current: DictConfig) -> list[str]:
    """Settings of :data:`RESUME_NODES` that differ between a checkpoint's stored config and ``current``, as
    ``key (checkpoint: a, now: b)``; a node whose ``_target_`` differs is named once, by its ``_target_``.

    Raises:
        ConfigError: ``current`` cannot be resolved.
    """
    differences: list[str] = []
    for node in RESUME_NODES:
        try:
            now_node = OmegaConf.to_container(current[node], resolve=True) if node in current else None
        except Exception:  # an interpolation that only resolves inside the Hydra app: not comparable here
            continue
        if node not in stored and now_node is None:
            continue
        old = _resume_view(stored, node)
        new = _resume_view({node: now_node} if now_node is not None else {}, node)
        changed_targets = [k[: -len("._target_")] for k in old if k.endswith("._target_") and old[k] != new.get(k)]
        for key in sorted(set(old) | set(new), key=lambda k: (k.count("."), k)):
            if any(key.startswith(t + ".") and key != t + "._target_" for t in changed_targets):
                continue
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                differences.append(f"{key} (checkpoint: {old.get(key, '<unset>')}, now: {new.get(key, '<unset>')})")
    return differences


def resume_mismatch_message(key: str, path: str | os.PathLike, differences: Sequence[str]) -> str:
    """One line naming the settings a resume would change."""
    shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
    return (f"{key}={str(path)!r} was trained with other settings than this run: {shown}. Resume with the "
            "checkpoint's settings, or start a new run without ckpt_path (nothing was written).")


# ---------------------------------------------------------------------------------------------- command line
_HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--resolve",
                     "--shell-completion", "-sc", "--package", "-p"}


def preflight(argv: Sequence[str]) -> Optional[DictConfig]:
    """Validate ``regan-train``'s command line before torch is imported; returns the composed config (or None
    when Hydra is asked for help/info, which Hydra answers itself).

    Raises:
        ConfigError: the first problem, as one line.
    """
    args = list(argv)
    if any(a.split("=")[0] in _HYDRA_INFO_FLAGS for a in args) or any(
            a.startswith(("--config-path", "--config-name", "--config-dir", "-cp", "-cn", "-cd")) for a in args):
        return None  # Hydra's own flags: help, info, another config (composed by Hydra itself)
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    variants = sweep_variants(overrides) if multirun else [overrides]
    cfg = None
    for variant in variants:
        composed = compose_checked(variant)
        drop_unselected(composed)
        check_values(composed)
        cfg = cfg or composed
    assert cfg is not None
    check_output_dirs(cfg, multirun)
    return cfg


__all__ = ["ConfigError", "LAST", "LAST_REQUIRED", "MAX_SEED", "RESUME_NODES", "check_output_dirs", "check_values",
           "check_writable_dir", "compose_checked", "config_differences", "fail", "last_checkpoint",
           "missing_last_message", "need_int", "one_line", "preflight", "resume_mismatch_message", "run_output_dir",
           "sweep_variants"]

"""Checks that ``regan-train`` runs before importing torch and Lightning, so a wrong input is answered in a second.

Torch-free on purpose (``scripts/bench_cli.py`` measures the answer time): config composition with a did-you-mean
for unknown keys and choices, the types and ranges of the values ``train`` relies on, and the output folders.
Checks that need torch (optimizers, models, data, checkpoints) follow in ``lightning_regan.cli.train``.
"""

from __future__ import annotations

import difflib
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
    print(f"regan-train: error: {exc}", file=sys.stderr)
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
        raise ConfigError(f"{lines[0]}: {lines[1] if len(lines) > 1 else 'bad syntax'} (write key=value).") from None
    except HydraException as exc:
        match = re.match(r"Could not override '([^']+)'", str(exc))
        if match is None:
            raise ConfigError(_first_line(exc)) from None
        key = match.group(1)
        rest = [o for o in overrides if not re.match(rf"^[+~]*{re.escape(key)}=", o)]
        try:
            base = compose_config(rest)
        except HydraException:
            base = compose_config([])
        raise ConfigError(_unknown_key(key, overrides, base, config_dir())) from None


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
    module = cfg.get("module") or {}
    need_int("module.n_critic", module.get("n_critic", 1), 1)
    decay = module.get("ema_decay")
    if decay is not None and (not is_number(decay) or not 0 < decay < 1):
        raise ConfigError(
            f"module.ema_decay must be a number in (0, 1) or null (no EMA), got {decay!r} (e.g. module.ema_decay=0.995)."
        )
    need_int("module.ema_start_g_step", module.get("ema_start_g_step", 0), 0)
    need_int("module.num_fixed_samples", module.get("num_fixed_samples", 64), 1)
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


# ---------------------------------------------------------------------------------------------- output folders
def check_writable_dir(key: str, path: str | os.PathLike) -> None:
    """Check that ``path`` is (or can be created as) a writable folder; :class:`ConfigError` naming ``key`` if not.

    Creates nothing: a probe file is written and removed in ``path`` or in its nearest existing parent.
    """
    folder = Path(path).expanduser()
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


__all__ = ["ConfigError", "MAX_SEED", "check_output_dirs", "check_values", "check_writable_dir", "compose_checked", "fail",
           "need_int", "preflight", "sweep_variants"]

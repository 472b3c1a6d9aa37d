"""``regan-train``: the Hydra training app. ``train(cfg)`` checks the config and hands it to
:mod:`lightning_regan.builders`; ``run`` is the body of the Hydra app whose torch-free shell, ``main``, lives in
:mod:`lightning_regan.cli.entry`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from lightning_regan.cli.checkpoints import CheckpointError, check_same_settings, resolve_resume, slurm_hpc_checkpoint
from lightning_regan.cli.checks import MAX_SEED, check_values, fail  # noqa: F401 (public names)
from lightning_regan.config import drop_unselected, has_target
from lightning_regan.data.base import DatasetError, DatasetNotFoundError
from lightning_regan.errors import ConfigError, PretrainedWeightsError
from lightning_regan.fid.weights import InceptionWeightsError

log = logging.getLogger(__name__)


# Errors that mean "fix your input", reported as one message (exit code 2) by regan-train.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, CheckpointError, DatasetError, DatasetNotFoundError, InceptionWeightsError, InstantiationException,
    PretrainedWeightsError,
)


#: Warnings regan-train's user cannot act on, each with the reason it is noise here.
QUIET_WARNINGS: tuple[str, ...] = (
    # torch 2.14 deprecates LeafSpec; Lightning 2.6's own _pytree.py still uses it (facts.md).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Logging counts batches across epochs (a G-step budget spans many short epochs): logs are written anyway.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Checkpoints are taken at the end of a G step, after the optimizers stepped: that state is the one wanted.
    r"Using ModelCheckpoint with manual optimization",
)
#: Info lines that are advertisements, not information about the run.
QUIET_INFO: tuple[str, ...] = ("Tip: For seamless cloud logging",)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in QUIET_INFO)


def quiet_console() -> None:
    """Silence :data:`QUIET_WARNINGS` and :data:`QUIET_INFO` (the ``regan-train`` process only; a library user's
    own Trainer is left alone)."""
    import warnings

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropInfo())


def validate_config(cfg: DictConfig) -> None:
    """Check the values ``train`` relies on, with messages that say how to fix them.

    The torch-free checks (:func:`lightning_regan.cli.checks.check_values`, also run by ``regan-train`` before
    torch is imported), then the optimizers, built once on a dummy parameter.

    Raises:
        ConfigError: on the first wrong value.
    """
    check_values(cfg)
    for key in ("g_optimizer", "d_optimizer"):
        node = cfg.module.get(key)
        if has_target(node):
            # Build it once on a dummy parameter: torch.optim checks lr, betas, eps, ... with its own messages.
            try:
                instantiate(node, _convert_="partial")([torch.nn.Parameter(torch.zeros(1))])
            except Exception as exc:
                args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
                raise ConfigError(
                    f"module.{key} ({node._target_} with {args}) cannot build its optimizer: {type(exc).__name__}: {exc}"
                ) from exc


def _resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    # The same check regan-train ran before Hydra started (cli.entry); here also for ckpt_path=last, whose folder
    # Hydra has now resolved, and for callers of train() that bypass the console entry point.
    path = resolve_resume(cfg, cfg.output_dir, announce=True)
    hpc = slurm_hpc_checkpoint(cfg.output_dir) if path is None else None
    if hpc is not None:  # a requeued SLURM job: Lightning resumes from it by itself, so it is checked the same way
        check_same_settings(hpc, cfg, "SLURM requeue checkpoint")
    return path


#: Exit codes of a run stopped by a signal (128 + the signal's number, as a shell reports a signalled process).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _stopped(cfg: DictConfig, what: str, code: int) -> None:
    """One line saying the run was stopped and where it can resume; exits with ``code``."""
    summary_path = Path(cfg.output_dir) / "summary.json"
    where = ""
    try:
        where = f" at G step {json.loads(summary_path.read_text())['g_steps']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    resume = f"resume from {last} with ckpt_path=last" if last.is_file() else "no checkpoint was written yet"
    print(f"regan-train: stopped by {what}{where}; {resume} (exit code {code}).", file=sys.stderr, flush=True)
    raise SystemExit(code)


#: Precisions measured to be much slower than 32-true on a device type, with what was measured.
SLOW_PRECISIONS: dict[tuple[str, str], str] = {
    ("cpu", "bf16-mixed"): "about 40x slower than trainer.precision=32-true on a CPU (default run: 0.21 against "
                           "about 9 G steps/s on a 2-core CPU)",
}
_PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}


def warn_slow_precision(cfg: DictConfig) -> Optional[str]:
    """Print a one-line warning (rank zero) when ``trainer.precision`` is known to be slow on the chosen device;
    returns the warning."""
    node = cfg.get("trainer") or {}
    precision = str(node.get("precision", "32-true"))
    precision = _PRECISION_ALIASES.get(precision, precision)
    accelerator = str(node.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    why = SLOW_PRECISIONS.get(("cpu" if on_cpu else accelerator, precision))
    if why is None:
        return None
    message = f"regan-train: warning: trainer.precision={precision} is {why}."
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(message, file=sys.stderr, flush=True)
    return message


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a GAN as configured and return ``(results, objects)``: the run's results (:func:`builders.fit`: what
    ``summary.json`` holds, also when no ``RunSummary`` ran) and the built objects.

    Everything that can be checked is checked before the Trainer starts: config values, the checkpoint to resume,
    the dataset, the models (one forward pass), the callbacks' own arguments.
    """
    from lightning_regan import builders

    drop_unselected(cfg)
    validate_config(cfg)
    warn_slow_precision(cfg)
    ckpt_path = _resolve_ckpt_path(cfg)
    # init_from (fine-tuning): read before the data is built; a resumed run takes its weights from ckpt_path instead.
    pretrained = builders.read_init_from(cfg) if ckpt_path is None else None
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objects = builders.build_all(cfg)
    if pretrained is not None:
        builders.apply_init_from(cfg, objects["module"], pretrained)
    summary = builders.fit(objects, ckpt_path)
    return summary, objects


def run(cfg: DictConfig) -> float:
    """The body of ``regan-train`` (called by the Hydra app in :mod:`lightning_regan.cli.entry`); returns
    ``summary[optimized_metric]`` for Hydra sweepers."""
    with open_dict(cfg):
        cfg.output_dir = str(Path(cfg.output_dir).resolve())
    quiet_console()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        summary, _ = train(cfg)
    except USER_ERRORS as exc:
        # A wrong value or missing file: the message says how to fix it; a traceback would only bury it.
        fail(exc)
    except SIGTERMException:  # a SystemExit with code None: a scheduler would count the run as a success
        _stopped(cfg, "SIGTERM", EXIT_SIGTERM)
    except SystemExit as exc:
        # Lightning answers Ctrl+C (KeyboardInterrupt) with sys.exit(1) after its graceful shutdown.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _stopped(cfg, "SIGINT (Ctrl+C)", EXIT_SIGINT)
        raise
    key = cfg.get("optimized_metric") or "best_fid"
    value = summary.get(key)
    if not isinstance(value, (int, float)):
        # A run without the metric (diverged before any FID, FID off) is the worst result for a minimizing sweeper.
        log.warning("regan-train: the run has no %s (status %s); returning inf.", key, summary.get("status"))
        return float("inf")
    return float(value)


if __name__ == "__main__":  # python -m lightning_regan.cli.train: regan-train itself
    from lightning_regan.cli.entry import main

    main()

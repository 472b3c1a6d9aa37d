"""``regan-train``: the Hydra training app. ``train(cfg)`` checks the config and hands it to
:mod:`lightning_regan.builders`; ``main`` is the ``@hydra.main`` shell."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from lightning_regan.config import config_dir
from lightning_regan.data.base import DatasetError, DatasetNotFoundError
from lightning_regan.fid.weights import InceptionWeightsError

log = logging.getLogger(__name__)


# Lightning's seed_everything (numpy) accepts seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A composed configuration holds a value that cannot work; raised before any training work."""


# Errors that mean "fix your input", reported as one message (exit code 2) by regan-train.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, DatasetNotFoundError, InceptionWeightsError, InstantiationException,
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


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def validate_config(cfg: DictConfig) -> None:
    """Check the values ``train`` relies on, with messages that say how to fix them.

    Raises:
        ConfigError: on the first wrong value.
    """
    def need_int(key: str, value: Any, minimum: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. {key}={max(minimum, 1)}).")

    if cfg.get("seed") is not None:  # null: Lightning's default seed
        need_int("seed", cfg.seed, 0)
        if cfg.seed > MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {cfg.seed}.")
    need_int("max_g_steps", cfg.get("max_g_steps"), 1)
    need_int("module.n_critic", cfg.module.get("n_critic", 1), 1)
    import torch

    for key in ("g_optimizer", "d_optimizer"):
        node = cfg.module.get(key)
        if _has_target(node):
            # Build it once on a dummy parameter: torch.optim checks lr, betas, eps, ... with its own messages.
            try:
                instantiate(node, _convert_="partial")([torch.nn.Parameter(torch.zeros(1))])
            except Exception as exc:
                args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
                raise ConfigError(
                    f"module.{key} ({node._target_} with {args}) cannot build its optimizer: {type(exc).__name__}: {exc}"
                ) from exc
    for key in ("fid", "samples"):
        node = (cfg.get("callbacks") or {}).get(key)
        if node is not None:
            need_int(f"callbacks.{key}.every_n_g_steps", node.get("every_n_g_steps", 0), 0)
    regs = cfg.get("regularizer") or {}
    for name, node in regs.items():
        if not _has_target(node):
            raise ConfigError(f"regularizer.{name} has no _target_; choose regularizers with regularizer=[r1,l2].")
        weight = node.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0 or math.isnan(weight):
            raise ConfigError(f"regularizer.{name}.weight must be a number >= 0 (0 disables the term), got {weight!r}.")
        need_int(f"regularizer.{name}.every", node.get("every", 1), 1)
    if not _has_target(cfg.get("data")):
        raise ConfigError("No dataset configured: pick one with data=digits|gaussians|mnist|... .")
    for key in ("generator", "discriminator"):
        if not _has_target(cfg.model.get(key)):
            raise ConfigError(f"model.{key} needs a _target_; pick an architecture with model=mlp|dcgan|resnet.")


def _resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return None
    if path == "last":
        candidate = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
        return str(candidate) if candidate.is_file() else None
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path!r} does not exist; pass an existing .ckpt file or ckpt_path=last.")
    return str(path)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a GAN as configured and return ``(summary, objects)``.

    Everything that can be checked is checked before the Trainer starts: config values, the dataset, the
    models (one forward pass), the callbacks' own arguments.
    """
    from lightning_regan import builders

    builders.drop_unselected(cfg)
    validate_config(cfg)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objects = builders.build_all(cfg)
    summary = builders.fit(objects, _resolve_ckpt_path(cfg))
    return summary, objects


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Entry point of ``regan-train``; returns ``summary[optimized_metric]`` for Hydra sweepers."""
    with open_dict(cfg):
        cfg.output_dir = str(Path(cfg.output_dir).resolve())
    quiet_console()
    try:
        summary, _ = train(cfg)
    except USER_ERRORS as exc:
        # A wrong value or missing file: the message says how to fix it; a traceback would only bury it.
        print(f"regan-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    value = summary.get(cfg.get("optimized_metric") or "best_fid")
    # A run without the metric (diverged before any FID, FID off) is the worst result for a minimizing sweeper.
    return float(value) if isinstance(value, (int, float)) else float("inf")


if __name__ == "__main__":
    main()

"""``regan-train``: the Hydra training app. ``train(cfg)`` does the work; ``run`` is the body of the Hydra app whose
torch-free shell, ``main``, lives in :mod:`lightning_regan.cli.entry`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_regan.cli.checkpoints import CheckpointError, read_checkpoint
from lightning_regan.cli.checks import MAX_SEED, ConfigError, check_values  # noqa: F401 (public names)
from lightning_regan.cli.entry import fail, main  # noqa: F401 (regan-train's entry point)
from lightning_regan.data.base import DatasetError, DatasetNotFoundError
from lightning_regan.fid.weights import InceptionWeightsError
from lightning_regan.module import GANModule, max_steps_for
from lightning_regan.regularizers import spectral_norm

log = logging.getLogger(__name__)


# Errors that mean "fix your input", reported as one message (exit code 2) by regan-train.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, CheckpointError, DatasetError, DatasetNotFoundError, InceptionWeightsError, InstantiationException,
)


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


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
        if _has_target(node):
            # Build it once on a dummy parameter: torch.optim checks lr, betas, eps, ... with its own messages.
            try:
                instantiate(node, _convert_="partial")([torch.nn.Parameter(torch.zeros(1))])
            except Exception as exc:
                args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
                raise ConfigError(
                    f"module.{key} ({node._target_} with {args}) cannot build its optimizer: {type(exc).__name__}: {exc}"
                ) from exc


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate the data module and check that its data can be read (clear error otherwise)."""
    datamodule = instantiate(cfg.data)
    validate = getattr(datamodule, "validate", None)
    if callable(validate):
        validate()
    return datamodule


def build_models(cfg: DictConfig, data_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Instantiate G and D for ``data_shape``; apply spectral normalization to D when asked."""
    generator = instantiate(cfg.model.generator, latent_dim=cfg.model.latent_dim, data_shape=list(data_shape))
    discriminator = instantiate(cfg.model.discriminator, data_shape=list(data_shape))
    if cfg.model.get("spectral_norm", False):
        discriminator = spectral_norm(discriminator)
    return generator, discriminator


def build_module(cfg: DictConfig, generator: Any, discriminator: Any) -> GANModule:
    """Instantiate the GANModule with its loss and regularizers."""
    regularizers = {name: instantiate(node) for name, node in (cfg.get("regularizer") or {}).items()}
    loss = instantiate(cfg.loss)
    return instantiate(
        cfg.module, generator=generator, discriminator=discriminator, loss=loss, regularizers=regularizers,
        latent_dim=cfg.model.latent_dim, _convert_="partial",
    )


def build_callbacks(cfg: DictConfig, datamodule: Any) -> list[Callback]:
    """Evaluation first, then decision, then outputs: FID, mode coverage, early termination, samples, checkpoints,
    summary, progress bar. Lightning moves checkpoint callbacks to the end by itself."""
    from lightning_regan.callbacks import ModeCoverageMonitor

    n_critic = cfg.module.get("n_critic", 1)
    callbacks: list[Callback] = []
    fid_every = 0
    if cfg.get("fid") is not None and cfg.fid.get("every_n_g_steps", 0) > 0:
        fid_every = cfg.fid.every_n_g_steps
        callbacks.append(instantiate(cfg.fid))
    if getattr(datamodule, "centers", None) is not None:
        callbacks.append(ModeCoverageMonitor(every_n_g_steps=fid_every or max(1, cfg.max_g_steps // 10)))
    if _has_target(cfg.get("early_stopping")):
        callbacks.append(instantiate(cfg.early_stopping))
    if cfg.get("samples") is not None and cfg.samples.get("every_n_g_steps", 0) > 0:
        callbacks.append(instantiate(cfg.samples))
    if cfg.get("checkpoint") is not None:
        # Checkpoints at FID evaluations; global_step = (n_critic + 1) * g_steps right after a G step.
        every = (fid_every or max(1, cfg.max_g_steps // 10)) * (n_critic + 1)
        extra: dict[str, Any] = {"every_n_train_steps": every}
        if fid_every:
            extra.update(monitor="val/fid", mode="min", filename="best")
        else:
            extra.update(save_top_k=0)
        callbacks.append(instantiate(cfg.checkpoint, **extra))
    if cfg.get("summary") is not None:
        callbacks.append(instantiate(cfg.summary))
    # Lightning refuses a progress-bar callback when the trainer has the bar switched off.
    if cfg.get("progress_bar") is not None and cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(instantiate(cfg.progress_bar))
    return callbacks


def _resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return None
    if path == "last":
        candidate = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            return None
        read_checkpoint(candidate, "ckpt_path")
        return str(candidate)
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path!r} does not exist; pass an existing .ckpt file or ckpt_path=last.")
    read_checkpoint(path, "ckpt_path")  # refuses unsafe, foreign or damaged files in one line, before the Trainer
    return str(path)


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
    """Train a GAN as configured and return ``(summary, objects)``.

    Everything that can be checked is checked before the Trainer starts: config values, the dataset, the
    models (one forward pass), the callbacks' own arguments.
    """
    validate_config(cfg)
    warn_slow_precision(cfg)
    ckpt_path = _resolve_ckpt_path(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)

    datamodule = build_datamodule(cfg)
    data_shape = tuple(datamodule.shape)
    generator, discriminator = build_models(cfg, data_shape)
    module = build_module(cfg, generator, discriminator)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["data_shape"] = list(data_shape)
    module.run_config = run_config

    callbacks = build_callbacks(cfg, datamodule)
    logger = instantiate(cfg.logger) if _has_target(cfg.get("logger")) else False
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_steps=max_steps_for(cfg.max_g_steps, module.n_critic),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(output_dir),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    # Our checkpoints hold only tensors, numbers and strings, so resuming never unpickles code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return summary, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer, "callbacks": callbacks}


def run(cfg: DictConfig) -> float:
    """The body of ``regan-train`` (called by the Hydra app in :mod:`lightning_regan.cli.entry`); returns
    ``summary[optimized_metric]`` for Hydra sweepers."""
    with open_dict(cfg):
        cfg.output_dir = str(Path(cfg.output_dir).resolve())
    try:
        summary, _ = train(cfg)
    except USER_ERRORS as exc:
        # A wrong value or missing file: the message says how to fix it; a traceback would only bury it.
        fail(exc)
    value = summary.get(cfg.get("optimized_metric") or "best_fid")
    # A run without the metric (diverged before any FID, FID off) is the worst result for a minimizing sweeper.
    return float(value) if isinstance(value, (int, float)) else float("inf")


if __name__ == "__main__":
    main()

"""``regan-train``: the Hydra training app. ``train(cfg)`` does the work; ``main`` is the ``@hydra.main`` shell."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_regan.config import config_dir
from lightning_regan.data.base import DatasetError, DatasetNotFoundError
from lightning_regan.fid.weights import InceptionWeightsError
from lightning_regan.module import GANModule, max_steps_for
from lightning_regan.regularizers import spectral_norm

log = logging.getLogger(__name__)


# Lightning's seed_everything (numpy) accepts seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A composed configuration holds a value that cannot work; raised before any training work."""


# Errors that mean "fix your input", reported as one message (exit code 2) by regan-train.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, DatasetNotFoundError, InceptionWeightsError, InstantiationException,
)


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
        node = cfg.get(key)
        if node is not None:
            need_int(f"{key}.every_n_g_steps", node.get("every_n_g_steps", 0), 0)
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
    # The `callbacks` group (conf/callbacks/*.yaml, one _target_ each), e.g. OptunaPruning added by hparams_search.
    for node in (cfg.get("callbacks") or {}).values():
        if _has_target(node):
            callbacks.append(instantiate(node))
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
        return str(candidate) if candidate.is_file() else None
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path!r} does not exist; pass an existing .ckpt file or ckpt_path=last.")
    return str(path)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a GAN as configured and return ``(summary, objects)``.

    Everything that can be checked is checked before the Trainer starts: config values, the dataset, the
    models (one forward pass), the callbacks' own arguments.
    """
    validate_config(cfg)
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
    ckpt_path = _resolve_ckpt_path(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Our checkpoints hold only tensors, numbers and strings, so resuming never unpickles code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return summary, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer, "callbacks": callbacks}


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Entry point of ``regan-train``; returns ``summary[optimized_metric]`` for Hydra sweepers."""
    with open_dict(cfg):
        cfg.output_dir = str(Path(cfg.output_dir).resolve())
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

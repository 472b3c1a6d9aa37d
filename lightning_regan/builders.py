"""Builders: a composed Hydra config -> DataModule, networks, GANModule, callbacks, loggers, Trainer.

``regan-train`` (``lightning_regan.cli.train``) is a thin shell around :func:`train`; ``regan-eval`` and
``regan-sample`` rebuild networks from a checkpoint's saved config with the same functions. Everything that has a
``_target_`` is built with ``hydra.utils.instantiate``; defaults live in one place each (the config file, or the class
when the config leaves the value out).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from lightning_regan.config import drop_unselected, has_target  # noqa: F401 (re-exported: torch-free, used by the CLI checks)
from lightning_regan.callbacks.g_step import OUTPUT
from lightning_regan.callbacks.run_summary import SummaryFields
from lightning_regan.stop_metric import stop_metric_fields
from lightning_regan.errors import ConfigError
from lightning_regan.module import GANModule, max_steps_for
from lightning_regan.pretrained import PretrainedWeights, load_pretrained, read_pretrained
from lightning_regan.regularizers import spectral_norm

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, validate: bool = True) -> L.LightningDataModule:
    """Instantiate the data module and (``validate``) check that its data can be read (clear error otherwise)."""
    datamodule = instantiate(cfg.data)
    check = getattr(datamodule, "validate", None)
    if validate and callable(check):
        check()
    return datamodule


def conditioning_classes(cfg: DictConfig, datamodule: Any) -> Optional[int]:
    """``datamodule.num_classes`` when ``model.conditional`` is on (clear error when the data has no labels), else None."""
    if not cfg.model.get("conditional", False):
        return None
    num_classes = getattr(datamodule, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"model.conditional=true needs labelled data with at least 2 classes; {type(datamodule).__name__} has "
            f"num_classes={num_classes!r}. Use labelled data (e.g. data=mnist, data=digits) or model.conditional=false."
        )
    for role in ("generator", "discriminator"):
        target = cfg.model[role]["_target_"]
        params = inspect.signature(get_class(target)).parameters
        if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"model.conditional=true: the {role} {target} takes no num_classes (it is unconditional).")
    return num_classes


def build_models(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: Optional[int] = None) -> tuple[Any, Any]:
    """Instantiate G and D for ``data_shape`` (class-conditional with ``num_classes``: both constructors get it);
    apply spectral normalization to D when asked."""
    labels = {"num_classes": num_classes} if num_classes is not None else {}
    generator = instantiate(cfg.model.generator, latent_dim=cfg.model.latent_dim, data_shape=list(data_shape), **labels)
    discriminator = instantiate(cfg.model.discriminator, data_shape=list(data_shape), **labels)
    if cfg.model.get("spectral_norm", False):
        discriminator = spectral_norm(discriminator)
    return generator, discriminator


def build_module(cfg: DictConfig, generator: Any, discriminator: Any, num_classes: Optional[int] = None) -> GANModule:
    """Instantiate the GANModule with its loss and regularizers (class-conditional with ``num_classes``)."""
    regularizers = {name: instantiate(node) for name, node in (cfg.get("regularizer") or {}).items()}
    loss = instantiate(cfg.loss)
    labels = {"num_classes": num_classes} if num_classes is not None else {}
    return instantiate(
        cfg.module, generator=generator, discriminator=discriminator, loss=loss, regularizers=regularizers,
        latent_dim=cfg.model.latent_dim, _convert_="partial", **labels,
    )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """Every ``callbacks.<name>`` node, plus ``early_stopping``, in the order of their declared ``stage``
    (evaluation, then decision, then outputs; config order within a stage).

    Progress-bar callbacks are skipped when the trainer has the bar switched off (Lightning refuses them).
    """
    nodes = {name: node for name, node in (cfg.get("callbacks") or {}).items() if has_target(node)}
    if has_target(cfg.get("early_stopping")):
        nodes["early_stopping"] = cfg.early_stopping
    built: list[Callback] = [instantiate(node) for node in nodes.values()]
    if not cfg.trainer.get("enable_progress_bar", True):
        built = [cb for cb in built if not isinstance(cb, ProgressBar)]
    return sorted(built, key=lambda cb: getattr(cb, "stage", OUTPUT))  # stable: config order within a stage


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every ``logger.<name>`` node (``logger=[csv,tensorboard]``); none with ``logger=none``."""
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if has_target(node)]


def build_trainer(cfg: DictConfig, module: GANModule, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the G-step budget converted to Lightning's ``max_steps``; checkpoints are
    written atomically (:class:`~lightning_regan.checkpoint_io.AtomicCheckpointIO`) unless ``trainer.plugins`` names
    plugins of its own."""
    from lightning_regan.checkpoint_io import AtomicCheckpointIO

    extra = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    return instantiate(
        cfg.trainer, max_steps=max_steps_for(cfg.max_g_steps, module.n_critic), callbacks=callbacks,
        logger=loggers or False, default_root_dir=str(cfg.output_dir), **extra,
    )


def build_all(cfg: DictConfig, validate_data: bool = True,
              before_trainer: Optional[Callable[..., None]] = None) -> dict[str, Any]:
    """DataModule, module, callbacks, loggers and Trainer of a composed config (nothing is trained).

    ``before_trainer(cfg, datamodule, module, callbacks)``, when given, runs before the Trainer is made (which prints
    Lightning's device lines): checks that need the built pieces answer there.
    """
    datamodule = build_datamodule(cfg, validate=validate_data)
    data_shape = tuple(datamodule.shape)
    num_classes = conditioning_classes(cfg, datamodule)
    generator, discriminator = build_models(cfg, data_shape, num_classes)
    module = build_module(cfg, generator, discriminator, num_classes)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["data_shape"] = list(data_shape)
    run_config["num_classes"] = num_classes  # regan-sample / regan-eval rebuild the networks without the data
    module.run_config = run_config
    callbacks = build_callbacks(cfg)
    if before_trainer is not None:
        before_trainer(cfg, datamodule, module, callbacks)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, module, callbacks, loggers)
    return {"cfg": cfg, "datamodule": datamodule, "module": module, "callbacks": callbacks, "loggers": loggers,
            "trainer": trainer}


# ---------------------------------------------------------------------------------------------- init_from
def read_init_from(cfg: DictConfig) -> Optional[PretrainedWeights]:
    """The weights ``cfg.init_from`` names, read safely (``None`` when it is not set). Read before the data and the
    networks are built, so a missing, unsafe or damaged file is answered first."""
    source = cfg.get("init_from")
    return None if source in (None, "") else read_pretrained(source)


def _model_differences(stored: Optional[dict[str, Any]], cfg: DictConfig, data_shape: Any) -> list[str]:
    """``key: checkpoint vs now`` for the model settings and data shape that differ from the pretraining run's."""
    if not isinstance(stored, dict):
        return []

    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()}
        return {prefix: node}

    old = {**flat(stored.get("model") or {}, "model"), "data_shape": stored.get("data_shape")}
    new = {**flat(OmegaConf.to_container(cfg.model, resolve=True), "model"), "data_shape": list(data_shape)}
    return [f"{k}: {old.get(k, '<unset>')} vs {new.get(k, '<unset>')}" for k in sorted(set(old) | set(new))
            if old.get(k, "<unset>") != new.get(k, "<unset>")]


def apply_init_from(cfg: DictConfig, module: GANModule, weights: PretrainedWeights, data_shape: Any = None) -> dict[str, Any]:
    """Load ``weights`` into ``module`` (parts ``cfg.init_from_parts``); a shape mismatch names the tensor and, for a
    regan-train checkpoint, the model settings that differ from its run. Returns what ``summary.json`` records."""
    shape = data_shape if data_shape is not None else (module.run_config or {}).get("data_shape", [])
    diffs = _model_differences(weights.config, cfg, shape)
    hint = f" (the checkpoint's run differs in {'; '.join(diffs[:3])})" if diffs else ""
    parts = cfg.get("init_from_parts")
    parts = None if parts is None else [str(p) for p in parts]
    record = load_pretrained(module, weights, parts, hint=hint)
    log.info("init_from: %s from %s (%s)", ", ".join(record["parts"]), record["path"], record["kind"])
    return record


def fit(objects: dict[str, Any], ckpt_path: Optional[str]) -> dict[str, Any]:
    """Fit the built objects and return the run's results, whatever callbacks ran.

    The results are the module's G and D steps, this process's ``wall_time_s`` and every callback's
    ``summary_fields()`` (``best_fid``, ``status``, ...), read from the run itself; where a ``summary.json`` was
    written (by ``RunSummary``, also from spawned DDP ranks), its entries complete them. Without one, the stop
    metric's fields (``best_value``, ...) come from the callbacks (:func:`stop_metric_fields`).
    """
    output_dir = Path(objects["cfg"].output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer, module = objects["trainer"], objects["module"]
    start = time.monotonic()
    # Our checkpoints hold only tensors, numbers and strings, so resuming never unpickles code.
    trainer.fit(module, datamodule=objects["datamodule"], ckpt_path=ckpt_path, weights_only=True)
    results: dict[str, Any] = {"g_steps": module.g_steps, "d_steps": module.d_steps,
                               "wall_time_s": time.monotonic() - start}
    for callback in trainer.callbacks:
        if isinstance(callback, SummaryFields):
            results.update(callback.summary_fields(trainer, module))
    summary_path = output_dir / "summary.json"
    if summary_path.is_file():
        results.update(json.loads(summary_path.read_text()))
    if "best_value" not in results:  # no RunSummary: the stop metric's best from the other callbacks
        cfg = objects["cfg"]
        results.update(stop_metric_fields(trainer.callbacks, results, cfg.get("stop_metric"), cfg.get("stop_mode")))
    return results


__all__ = [
    "apply_init_from", "build_all", "build_callbacks", "build_datamodule", "build_loggers", "build_models",
    "build_module", "build_trainer", "conditioning_classes", "drop_unselected", "fit", "read_init_from",
]

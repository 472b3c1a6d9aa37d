"""Checks ``regan-train`` runs on the built pieces (data, module, callbacks) before the Trainer is made: each wrong
combination is one line with the override that fixes it (exit code 2), before any Lightning output.

- the metric the stop rules and checkpoints read (``stop_metric``) must be one the configured callbacks log;
- augmentation works on images, not on points;
- FID with Inception needs its weights on disk (never downloaded implicitly).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

from omegaconf import DictConfig

from lightning_regan.errors import ConfigError


def logged_metrics(callback: Any, module: Any = None) -> Optional[set[str]]:
    """The ``val/...`` metrics ``callback`` logs as configured, or ``None`` when it cannot be known.

    A callback may declare them with a ``logged_metrics()`` method or attribute (a set of keys); lightning-regan's
    evaluation callbacks are read from their settings; other callbacks of Lightning and lightning-regan log none.
    """
    declared = getattr(callback, "logged_metrics", None)
    if declared is not None:
        return set(declared() if callable(declared) else declared)
    from lightning_regan.callbacks import FIDMonitor, ModeCoverageMonitor, OverfittingMonitor
    from lightning_regan.callbacks import fid_monitor as fm
    from lightning_regan.callbacks import overfitting as of

    if isinstance(callback, FIDMonitor):
        if not callback.active:
            return set()
        keys = {fm.FID_KEY, fm.FID_STEP_KEY}
        flags = {fm.KID_KEY: callback.kid, fm.MMD_KEY: callback.mmd, fm.FID_INF_KEY: bool(callback.fid_inf),
                 fm.FID_STD_KEY: bool(callback.noise_draws), fm.PRECISION_KEY: bool(callback.precision_recall),
                 fm.RECALL_KEY: bool(callback.precision_recall),
                 fm.INTRA_FID_KEY: callback.intra_fid and getattr(module, "conditional", False),
                 fm.CLASS_ACCURACY_KEY: getattr(module, "conditional", False)}
        keys |= {key for key, on in flags.items() if on}
        keys |= {f"{fm.LOGGED[name]}_g_step" for name in fm.SIGNALS if fm.LOGGED[name] in keys}
        return keys
    if isinstance(callback, ModeCoverageMonitor):
        return {"val/modes_covered", "val/hq_fraction", "val/modes_g_step"}
    if isinstance(callback, OverfittingMonitor):
        return {of.D_TRAIN_KEY, of.D_HELDOUT_KEY, of.D_GAP_KEY, of.D_GAP_STEP_KEY, of.D_GENERATED_KEY, of.D_RV_KEY}
    if type(callback).__module__.startswith(("lightning.", "pytorch_lightning.", "lightning_regan.")):
        return set()
    return None  # a user's callback: it may log anything


def _fid_metric_without_fid(callbacks: Sequence[Any], metric: str) -> bool:
    """``metric`` is one the FID monitor logs, and no FID monitor evaluates (none configured, or
    ``callbacks.fid.every_n_g_steps=0``): a run that measures no metric on purpose, where the loss rules stand in."""
    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.callbacks import fid_monitor as fm

    return metric in fm.LOGGED.values() and not any(isinstance(cb, FIDMonitor) and cb.active for cb in callbacks)


def monitored_metrics(cfg: DictConfig, callbacks: Sequence[Any]) -> list[tuple[str, str]]:
    """``(metric, how the user sets it)`` for every ``val/...`` metric a stop rule, checkpoint or best-generator reads."""
    stop_metric = cfg.get("stop_metric")
    seen: list[tuple[str, str]] = []

    def add(metric: Any, key: str) -> None:
        if isinstance(metric, str) and metric.startswith("val/") and metric not in {m for m, _ in seen}:
            seen.append((metric, "stop_metric" if metric == stop_metric else key))

    for cb in callbacks:  # stop_metric only where something reads it (callbacks=[summary] reads nothing)
        add(getattr(cb, "monitor", None), f"the monitor of {type(cb).__name__}")
        for name, rule in (getattr(cb, "rules", None) or {}).items():
            add(getattr(rule, "monitor", None), f"early_stopping.rules.{name}.monitor")
    return seen


def check_monitored_metrics(cfg: DictConfig, callbacks: Sequence[Any], module: Any = None) -> None:
    """Refuse a monitored ``val/...`` metric that no configured callback logs (a typo would turn stopping off).

    Raises:
        ConfigError: naming the metric, the metrics that are logged, and an override.
    """
    logged: set[str] = set()
    for cb in callbacks:
        keys = logged_metrics(cb, module)
        if keys is None:
            return  # a callback of the user's may log it
        logged |= keys
    for metric, key in monitored_metrics(cfg, callbacks):
        if metric in logged or _fid_metric_without_fid(callbacks, metric):
            continue
        shown = sorted(k for k in logged if not k.endswith("_g_step"))
        example = next((k for k in ("val/mmd", "val/fid") if k in shown), shown[0] if shown else None)
        options = f"the configured callbacks log {', '.join(shown)}" if shown else "the configured callbacks log none"
        setting = f"{key}={metric}" if key == "stop_metric" or key.startswith("early_stopping.") else f"{key} ({metric})"
        fix = f" (e.g. stop_metric={example})" if example else " (add callbacks.fid or set stop_metric to one of them)"
        hint = ""
        from lightning_regan.callbacks import fid_monitor as fm

        flag = {fm.MMD_KEY: "mmd", fm.KID_KEY: "kid", fm.FID_INF_KEY: "fid_inf", fm.PRECISION_KEY: "precision_recall",
                fm.RECALL_KEY: "precision_recall", fm.FID_STD_KEY: "noise_draws"}.get(metric)
        if flag is not None:
            value = "10" if flag == "noise_draws" else "true"
            hint = f"; it is logged with callbacks.fid.{flag}={value}"
        raise ConfigError(f"{setting} is logged by none of the configured callbacks, so the stop rules and best.ckpt "
                          f"would never see it; {options}{fix}{hint}.")


def check_augment_shape(cfg: DictConfig, data_shape: Sequence[int], module: Any) -> None:
    """Refuse augmentation of samples that are not images ``(C, H, W)`` (e.g. the 2-D points of ``data=gaussians``).

    Raises:
        ConfigError: naming the augmentation, the data's shape and ``augment=none``.
    """
    augment = getattr(module, "augment", None)
    if augment is None or len(tuple(data_shape)) == 3:
        return
    data = (cfg.get("data") or {}).get("_target_", "the data")
    raise ConfigError(
        f"module.augment ({type(augment).__name__}) works on images of shape (C, H, W), but {data.rsplit('.', 1)[-1]} "
        f"gives samples of shape {list(data_shape)}; use augment=none for 2-D points (or image data, e.g. data=digits)."
    )


def check_inception_weights(callbacks: Iterable[Any], datamodule: Any) -> None:
    """Look up the Inception weights an active FID monitor will need, before the Trainer starts.

    Raises:
        ConfigError: the weights are missing; the message names ``regan-fid-weights`` and the override spellings.
    """
    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.fid.extractors import resolve_extractor_spec
    from lightning_regan.fid.weights import InceptionWeightsError, resolve_inception_weights

    for cb in callbacks:
        if not isinstance(cb, FIDMonitor) or not cb.active:
            continue
        if resolve_extractor_spec(cb.feature_extractor, datamodule) != "inception":
            continue
        try:
            resolve_inception_weights(cb.weights_path, cb.allow_download)
        except InceptionWeightsError as exc:
            text = str(exc).replace("allow_download=True", "callbacks.fid.allow_download=true").replace(
                "feature_extractor='classifier' (or 'identity' for 2-D points)",
                "callbacks.fid.feature_extractor=classifier (or identity for 2-D points; ~callbacks.fid for no FID)")
            raise ConfigError(text) from None


def check_before_trainer(cfg: DictConfig, datamodule: Any, module: Any, callbacks: Sequence[Any]) -> None:
    """All checks of this module, in the order a user would fix them."""
    check_augment_shape(cfg, tuple(datamodule.shape), module)
    check_monitored_metrics(cfg, callbacks, module)
    check_inception_weights(callbacks, datamodule)


__all__ = ["check_augment_shape", "check_before_trainer", "check_inception_weights", "check_monitored_metrics",
           "logged_metrics", "monitored_metrics"]

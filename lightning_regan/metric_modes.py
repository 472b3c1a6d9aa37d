"""Which way a logged metric improves, torch-free (the configs' resolvers use it before torch is imported)."""

from __future__ import annotations

#: Last path components of logged metrics where higher is better (shares and counts); every other metric (FID, MMD,
#: KID, losses) is a distance or a loss, where lower is better.
HIGHER_IS_BETTER: frozenset[str] = frozenset({
    "class_accuracy", "accuracy", "precision", "recall", "density", "coverage", "modes_covered", "hq_fraction",
})


def metric_mode(metric: str) -> str:
    """``"max"`` for a metric where higher is better (:data:`HIGHER_IS_BETTER`: ``val/class_accuracy``,
    ``val/recall``, ...), else ``"min"`` (``val/mmd``, ``val/fid``)."""
    return "max" if str(metric).rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"


def sweep_direction(mode: str) -> str:
    """Optuna's direction for a metric's mode: ``"minimize"`` for ``"min"``, ``"maximize"`` for ``"max"``."""
    if mode not in ("min", "max"):
        raise ValueError(f"stop_mode must be 'min' or 'max', got {mode!r}.")
    return "minimize" if mode == "min" else "maximize"


__all__ = ["HIGHER_IS_BETTER", "metric_mode", "sweep_direction"]

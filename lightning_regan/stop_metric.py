"""The stop metric: the one quality number a run decides on, and what the output callbacks show of it.

The stop rules and ``BestGenerator`` decide on one logged metric (``stop_metric`` in the configs, ``val/mmd`` by
default). The progress bar, ``summary.json`` and the plots lead with the same number: :func:`find_stop_metric` names
it (from an explicit setting, else from the deciding callbacks' public ``monitor``/``mode``) and
:class:`MetricHistory` records its evaluations and its best value from ``trainer.callback_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from lightning_regan.logged import NewEvaluations
from lightning_regan.metric_modes import HIGHER_IS_BETTER, metric_mode, sweep_direction  # noqa: F401 (public here)


def _is_keeper(cb: Any) -> bool:
    """A callback that keeps the best of a metric (``BestGenerator``): public ``monitor``, ``mode``, ``best_value``,
    ``best_g_step``."""
    return all(hasattr(cb, a) for a in ("monitor", "mode", "best_value", "best_g_step")) and isinstance(cb.monitor, str)


def _evaluation_rules(cb: Any) -> list[Any]:
    """The evaluation rules of a callback with public stop ``rules`` (``EarlyTermination``), in order."""
    rules = getattr(cb, "rules", None)
    if not isinstance(rules, Mapping):
        return []
    return [r for r in rules.values() if getattr(r, "cadence", None) == "evaluation" and getattr(r, "monitor", None)]


def find_stop_metric(callbacks: Iterable[Any]) -> Optional[tuple[str, str]]:
    """``(metric, mode)`` the run decides on, read from the callbacks' public attributes (never their classes:
    callbacks talk through metrics), or ``None``.

    In order: a callback that keeps the best of a metric (``BestGenerator``: ``monitor``, ``mode``); the first
    evaluation rule of a callback with stop ``rules`` (``EarlyTermination``: ``rules[...].monitor``, ``.mode``); a
    ``ModelCheckpoint`` with a ``monitor``.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = list(callbacks)
    for cb in callbacks:
        if _is_keeper(cb):
            return cb.monitor, cb.mode
    for cb in callbacks:
        rules = _evaluation_rules(cb)
        if rules:
            return rules[0].monitor, rules[0].mode
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor:
            return cb.monitor, cb.mode
    return None


def stop_metric_fields(callbacks: Iterable[Any], results: dict[str, Any], metric: Optional[str] = None,
                       mode: Optional[str] = None) -> dict[str, Any]:
    """``summary.json``'s stop-metric fields (``stop_metric``, ``stop_mode``, ``best_value``, ``best_g_step``,
    ``history``) of a run that had no ``RunSummary``, from what the other callbacks report: the evaluation history
    ``<name>_history`` in ``results`` (``FIDMonitor``'s ``mmd_history``, ``fid_history``), else a callback that kept
    the best of that metric (``BestGenerator``). Empty when the run names no stop metric."""
    callbacks = list(callbacks)
    if metric is None:
        found = find_stop_metric(callbacks)
        if found is None:
            return {}
        metric, mode = found[0], mode or found[1]
    mode = mode or metric_mode(metric)
    tracker = MetricHistory(metric, mode)
    tracker.history = [(int(g), float(v)) for g, v in results.get(f"{metric.rsplit('/', 1)[-1]}_history") or []]
    best = tracker.best
    if best is None:
        keeper = next((cb for cb in callbacks if _is_keeper(cb) and cb.monitor == metric), None)
        if keeper is not None and keeper.best_value is not None:
            best = (keeper.best_g_step, keeper.best_value)
    return {"stop_metric": metric, "stop_mode": mode, "best_value": best[1] if best else None,
            "best_g_step": best[0] if best else None, "history": [[g, v] for g, v in tracker.history]}


class MetricHistory:
    """The evaluations of one logged metric and the best of them (lower for ``mode="min"``, higher for ``"max"``).

    Each new evaluation (a new ``<metric>_g_step``, else a changed value; :class:`~lightning_regan.logged.NewEvaluations`)
    is kept as ``(g_step, value)``. Non-finite values are kept in the history but never best.
    """

    def __init__(self, metric: str, mode: str = "min", step_key: Optional[str] = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"MetricHistory: mode must be 'min' or 'max', got {mode!r}.")
        self.metric = metric
        self.mode = mode
        self.history: list[tuple[int, float]] = []
        self._evaluations = NewEvaluations(metric, step_key or f"{metric}_g_step")

    def read(self, metrics: Any, g_step: int) -> Optional[tuple[int, float]]:
        """Record a new evaluation in ``metrics`` (``trainer.callback_metrics``); returns it, else ``None``."""
        new = self._evaluations.read(metrics, g_step)
        if new is not None and not (self.history and self.history[-1][0] == new[0]):
            self.history.append((int(new[0]), float(new[1])))
        return new

    @property
    def last(self) -> Optional[float]:
        return self.history[-1][1] if self.history else None

    @property
    def best(self) -> Optional[tuple[int, float]]:
        """``(g_step, value)`` of the best finite evaluation (the earliest on ties), or ``None``."""
        finite = [(g, v) for g, v in self.history if math.isfinite(v)]
        if not finite:
            return None
        pick = min if self.mode == "min" else max
        value = pick(v for _, v in finite)
        return next((g, v) for g, v in finite if v == value)

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "history": [[g, v] for g, v in self.history],
                "last_step": self._evaluations.last_step, "last_value": self._evaluations.last_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("metric", self.metric) != self.metric:
            return  # another metric's history (the config changed): start afresh
        self.history = [(int(g), float(v)) for g, v in state.get("history") or []]
        self._evaluations.last_step = state.get("last_step")
        self._evaluations.last_value = state.get("last_value")


__all__ = ["HIGHER_IS_BETTER", "MetricHistory", "find_stop_metric", "metric_mode", "stop_metric_fields",
           "sweep_direction"]

"""Pure stop rules for GAN training: loss plateau, FID plateau (patience, noise-aware, trend, learning curve),
mode collapse, divergence.

No Lightning here: each rule is a small state machine fed ``update(g_step, metrics)`` with plain floats
and answering ``(should_stop, message)``. :class:`~lightning_regan.callbacks.EarlyTermination` feeds them
from ``trainer.callback_metrics``, reduces the decision over ranks and stops the Trainer.

Every rule keeps its counters in ``state_dict()`` (a plain dict) so a resumed run takes the same decision
at the same G step. ``load_state_dict`` restores counters and history only: the constructor arguments
(patience, min_delta, ...) are the configuration and always win over what a checkpoint recorded; a
difference is reported with a warning.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, Optional, Union


class StopReason(str, Enum):
    """Why training ended; the value is what ``summary.json`` records as ``stop_reason``."""

    MAX_STEPS = "max_steps"
    LOSS_PLATEAU = "loss_plateau"
    FID_PLATEAU = "fid_plateau"
    COLLAPSED = "collapsed"
    DIVERGENCE = "divergence"


# Precedence when several ranks or rules want to stop at once: the largest code wins.
REASON_CODES: dict[Optional[StopReason], int] = {
    None: 0,
    StopReason.LOSS_PLATEAU: 1,
    StopReason.FID_PLATEAU: 2,
    StopReason.COLLAPSED: 3,
    StopReason.DIVERGENCE: 4,
}
CODE_REASONS: dict[int, Optional[StopReason]] = {code: reason for reason, code in REASON_CODES.items()}


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _need_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _need_number(owner: str, name: str, value: Any, minimum: float = 0.0, strict: bool = False,
                 optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        extra = " or null to disable it" if optional else ""
        raise ValueError(f"{owner}: {name} must be a finite number {bound}{extra}, got {value!r}.")
    return float(value)


def _need_keys(owner: str, name: str, value: Union[str, Sequence[str]]) -> tuple[str, ...]:
    keys = (value,) if isinstance(value, str) else tuple(value)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"{owner}: {name} must be a non-empty list of metric names, got {value!r}.")
    return keys


class StopRule:
    """Base class: a pure, resumable stop criterion evaluated on plain floats."""

    #: The reason reported when this rule stops training.
    reason: ClassVar[StopReason]

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        """Feed the metrics of one G step (or one evaluation); return ``(should_stop, message)``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor arguments (the configuration, never restored from a checkpoint)."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Counters and history as a plain dict (plus the configuration, for comparison on load)."""
        return {"config": self.config(), **self._state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore counters and history; the current configuration is kept (a change is warned about)."""
        saved = state_dict.get("config") or {}
        changed = {
            k: (saved[k], v) for k, v in self.config().items()
            if k in saved and _normalize(saved[k]) != _normalize(v)
        }
        if changed:
            text = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            warnings.warn(
                f"{type(self).__name__}: the configuration differs from the checkpoint ({text}); "
                "using the current configuration with the restored counters.",
                UserWarning,
                stacklevel=2,
            )
        self._load_state(state_dict)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _normalize(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


class LossPlateau(StopRule):
    """Stop when the smoothed training losses have stopped moving.

    Rule: each monitored loss is smoothed by an exponential moving average of span ``window`` G steps
    (``alpha = 2 / (window + 1)``). Every ``check_every_n_g_steps`` G steps, once ``warmup_g_steps`` have
    passed and every EMA has seen ``window`` values, each smoothed loss is compared with its *reference*:
    its smoothed value at the last check where it moved. It moved when
    ``|ema - ref| >= min_delta * max(|ref|, scale_floor)``, and then the reference becomes ``ema``. When no
    monitored loss moved for ``patience`` consecutive checks, training stops.

    Why movement rather than "improvement over the best" as in Lightning's EarlyStopping: the two GAN
    losses are not objectives that should both go down (D's loss falls when D wins while G's rises), so a
    lower loss is not better; what says the game has settled is that the smoothed losses stopped moving.
    The EMA removes the step-to-step oscillation, the relative threshold makes ``min_delta`` mean the same
    for losses of any scale (``scale_floor`` keeps it meaningful for losses near 0, e.g. Wasserstein), and
    comparing with the reference rather than with the previous check lets a slow drift add up until it
    counts as movement: a loss that keeps changing by more than ``min_delta / patience`` per check never
    reads as a plateau, however small each single step is.

    Args:
        monitors: Metric names of the losses (all must be flat to stop).
        window: EMA span in G steps.
        min_delta: Relative change of a smoothed loss that counts as movement (0.02 = 2 %).
        patience: Consecutive checks without movement before stopping.
        warmup_g_steps: No check before this G step.
        check_every_n_g_steps: G steps between checks.
        scale_floor: Smallest scale used for the relative change.
    """

    reason = StopReason.LOSS_PLATEAU

    def __init__(
        self,
        monitors: Union[str, Sequence[str]] = ("train/g_loss", "train/d_loss"),
        window: int = 100,
        min_delta: float = 0.02,
        patience: int = 5,
        warmup_g_steps: int = 500,
        check_every_n_g_steps: int = 100,
        scale_floor: float = 0.1,
    ) -> None:
        name = type(self).__name__
        self.monitors = _need_keys(name, "monitors", monitors)
        self.window = _need_int(name, "window", window, 1)
        self.min_delta = _need_number(name, "min_delta", min_delta, 0.0)
        self.patience = _need_int(name, "patience", patience, 1)
        self.warmup_g_steps = _need_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.check_every_n_g_steps = _need_int(name, "check_every_n_g_steps", check_every_n_g_steps, 1)
        self.scale_floor = _need_number(name, "scale_floor", scale_floor, 0.0, strict=True)
        self.ema: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self.reference: dict[str, float] = {}
        self.wait_count = 0
        self.last_check_step: Optional[int] = None

    @property
    def alpha(self) -> float:
        """EMA weight of the newest value."""
        return 2.0 / (self.window + 1.0)

    def config(self) -> dict[str, Any]:
        return {
            "monitors": list(self.monitors), "window": self.window, "min_delta": self.min_delta,
            "patience": self.patience, "warmup_g_steps": self.warmup_g_steps,
            "check_every_n_g_steps": self.check_every_n_g_steps, "scale_floor": self.scale_floor,
        }

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        for key in self.monitors:
            value = metrics.get(key)
            if not _is_finite(value):  # missing or non-finite: the Divergence rule's business
                continue
            previous = self.ema.get(key)
            self.ema[key] = float(value) if previous is None else previous + self.alpha * (value - previous)
            self.seen[key] = self.seen.get(key, 0) + 1

        if g_step < self.warmup_g_steps:
            return False, ""
        if self.last_check_step is not None and g_step - self.last_check_step < self.check_every_n_g_steps:
            return False, ""
        ready = [k for k in self.monitors if self.seen.get(k, 0) >= self.window]
        if not ready:
            return False, ""
        self.last_check_step = g_step

        moved = []
        for key in ready:
            ref = self.reference.get(key)
            if ref is None or abs(self.ema[key] - ref) >= self.min_delta * max(abs(ref), self.scale_floor):
                self.reference[key] = self.ema[key]
                moved.append(key)
        if moved:
            self.wait_count = 0
            return False, f"Smoothed {', '.join(moved)} moved at G step {g_step}."
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, ""
        values = ", ".join(f"{k} ~ {self.ema[k]:.4g}" for k in ready)
        return True, (
            f"Loss plateau: the smoothed losses ({values}) moved less than {self.min_delta:.1%} for "
            f"{self.wait_count} checks (every {self.check_every_n_g_steps} G steps), at G step {g_step}."
        )

    def _state(self) -> dict[str, Any]:
        return {
            "ema": dict(self.ema), "seen": dict(self.seen), "reference": dict(self.reference),
            "wait_count": self.wait_count, "last_check_step": self.last_check_step,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.ema = {k: float(v) for k, v in (state.get("ema") or {}).items()}
        self.seen = {k: int(v) for k, v in (state.get("seen") or {}).items()}
        self.reference = {k: float(v) for k, v in (state.get("reference") or {}).items()}
        self.wait_count = int(state.get("wait_count", 0))
        last = state.get("last_check_step")
        self.last_check_step = None if last is None else int(last)


class FIDPlateau(StopRule):
    """Stop when the smoothed FID has not improved on its best for ``patience`` evaluations.

    Rule: each evaluation's FID joins a window of the last ``window`` finite values; the smoothed FID is
    their median. It improves when ``smoothed < best - min_delta * |best|`` (``min_delta`` is relative:
    FID scales differ by orders of magnitude between datasets and feature extractors), and then ``best``
    becomes ``smoothed`` and the count restarts. Otherwise, from ``warmup_g_steps`` on, the evaluation
    counts towards ``patience``; a non-finite FID counts as an evaluation without improvement.

    Why a median: FID is not monotone (StyleGAN2-ADA #68: 48.7 -> 84.0 -> 56.2). With ``window >= 3``
    a one-evaluation spike never becomes the smoothed value, while an EMA would carry it over several
    evaluations; a sustained change shows after ``window // 2 + 1`` evaluations. Comparing with the best
    (not the previous value) means a noisy but improving FID keeps resetting the count, and a spike
    followed by recovery stops only if the recovery takes ``patience`` evaluations without a new best.

    Args:
        patience: Evaluations without improvement before stopping.
        min_delta: Relative improvement of the smoothed FID over its best that counts (0.01 = 1 %).
        window: Number of recent evaluations whose median is the smoothed FID (1 = no smoothing).
        warmup_g_steps: Evaluations before this G step never count towards ``patience``.
        monitor: Name of the FID metric.
    """

    reason = StopReason.FID_PLATEAU

    def __init__(
        self,
        patience: int = 4,
        min_delta: float = 0.01,
        window: int = 3,
        warmup_g_steps: int = 0,
        monitor: str = "val/fid",
    ) -> None:
        name = type(self).__name__
        self.patience = _need_int(name, "patience", patience, 1)
        self.min_delta = _need_number(name, "min_delta", min_delta, 0.0)
        if self.min_delta >= 1.0:
            raise ValueError(f"{name}: min_delta is relative and must be < 1 (0.01 = 1 %), got {min_delta!r}.")
        self.window = _need_int(name, "window", window, 1)
        self.warmup_g_steps = _need_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.monitor = _need_keys(name, "monitor", monitor)[0]
        self.recent: list[float] = []
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.wait_count = 0
        self.evaluations = 0

    def config(self) -> dict[str, Any]:
        return {
            "patience": self.patience, "min_delta": self.min_delta, "window": self.window,
            "warmup_g_steps": self.warmup_g_steps, "monitor": self.monitor,
        }

    @property
    def smoothed(self) -> Optional[float]:
        """Median of the recent finite FIDs (``None`` before the first one)."""
        return statistics.median(self.recent) if self.recent else None

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        value = metrics.get(self.monitor)
        if value is None:  # no evaluation at this step
            return False, ""
        self.evaluations += 1
        if _is_finite(value):
            self.recent = (self.recent + [float(value)])[-self.window:]
            smoothed = self.smoothed
            assert smoothed is not None
            if self.best is None or smoothed < self.best - self.min_delta * abs(self.best):
                self.best, self.best_step, self.wait_count = smoothed, g_step, 0
                return False, f"Smoothed {self.monitor} improved to {smoothed:.4g} at G step {g_step}."
        if g_step < self.warmup_g_steps:
            return False, ""
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, ""
        best = "none" if self.best is None else f"{self.best:.4g} at G step {self.best_step}"
        return True, (
            f"FID plateau: the smoothed {self.monitor} (median of the last {self.window}) did not improve "
            f"by {self.min_delta:.1%} on its best ({best}) for {self.wait_count} evaluations; "
            f"last value {float(value):.4g} at G step {g_step}."
        )

    def _state(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent), "best": self.best, "best_step": self.best_step,
            "wait_count": self.wait_count, "evaluations": self.evaluations,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.recent = [float(v) for v in state.get("recent") or []][-self.window:]
        best = state.get("best")
        self.best = None if best is None else float(best)
        best_step = state.get("best_step")
        self.best_step = None if best_step is None else int(best_step)
        self.wait_count = int(state.get("wait_count", 0))
        self.evaluations = int(state.get("evaluations", 0))


class Divergence(StopRule):
    """Stop when training has diverged: non-finite losses, or a collapsed / exploding loss.

    Rule: a non-finite value of any key in ``monitors`` stops at once (also during warmup). From
    ``warmup_g_steps`` on, a check *violates* when ``|D loss| < d_loss_floor`` (D separates real from fake
    perfectly: its adversarial loss has collapsed to ~0), ``|D loss| > d_loss_ceiling`` or
    ``|G loss| > g_loss_ceiling`` (explosion). ``patience`` consecutive violating checks stop training;
    one normal check resets the count. Magnitudes are used so the thresholds also make sense for losses
    that can be negative (Wasserstein). ``None`` disables a threshold.

    The D loss is ``train/d_adv`` by default, the adversarial part without regularization terms: a
    gradient penalty keeps the total D loss away from 0 even when D has won.

    Args:
        check_finite: Stop at the first NaN/inf among ``monitors``.
        d_loss_floor: Collapse threshold of ``|D loss|``.
        d_loss_ceiling: Explosion threshold of ``|D loss|``.
        g_loss_ceiling: Explosion threshold of ``|G loss|``.
        patience: Consecutive violating checks (G steps) before stopping.
        warmup_g_steps: No floor/ceiling check before this G step.
        d_loss_key: Metric name of the D loss compared with the floor and ceiling.
        g_loss_key: Metric name of the G loss compared with the ceiling.
        monitors: Metric names checked for finiteness.
    """

    reason = StopReason.DIVERGENCE

    def __init__(
        self,
        check_finite: bool = True,
        d_loss_floor: Optional[float] = None,
        d_loss_ceiling: Optional[float] = None,
        g_loss_ceiling: Optional[float] = None,
        patience: int = 100,
        warmup_g_steps: int = 0,
        d_loss_key: str = "train/d_adv",
        g_loss_key: str = "train/g_loss",
        monitors: Union[str, Sequence[str]] = ("train/d_loss", "train/g_loss"),
    ) -> None:
        name = type(self).__name__
        if not isinstance(check_finite, bool):
            raise ValueError(f"{name}: check_finite must be true or false, got {check_finite!r}.")
        self.check_finite = check_finite
        self.d_loss_floor = _need_number(name, "d_loss_floor", d_loss_floor, 0.0, strict=True, optional=True)
        self.d_loss_ceiling = _need_number(name, "d_loss_ceiling", d_loss_ceiling, 0.0, strict=True, optional=True)
        self.g_loss_ceiling = _need_number(name, "g_loss_ceiling", g_loss_ceiling, 0.0, strict=True, optional=True)
        floor, ceiling = self.d_loss_floor, self.d_loss_ceiling
        if floor is not None and ceiling is not None and floor >= ceiling:
            raise ValueError(
                f"{name}: d_loss_floor ({d_loss_floor}) must be below d_loss_ceiling ({d_loss_ceiling})."
            )
        self.patience = _need_int(name, "patience", patience, 1)
        self.warmup_g_steps = _need_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.d_loss_key = _need_keys(name, "d_loss_key", d_loss_key)[0]
        self.g_loss_key = _need_keys(name, "g_loss_key", g_loss_key)[0]
        self.monitors = _need_keys(name, "monitors", monitors)
        self.violation_count = 0
        self.first_violation_step: Optional[int] = None

    @property
    def keys(self) -> tuple[str, ...]:
        """Every metric name this rule reads."""
        return tuple(dict.fromkeys((*self.monitors, self.d_loss_key, self.g_loss_key)))

    def config(self) -> dict[str, Any]:
        return {
            "check_finite": self.check_finite, "d_loss_floor": self.d_loss_floor,
            "d_loss_ceiling": self.d_loss_ceiling, "g_loss_ceiling": self.g_loss_ceiling,
            "patience": self.patience, "warmup_g_steps": self.warmup_g_steps, "d_loss_key": self.d_loss_key,
            "g_loss_key": self.g_loss_key, "monitors": list(self.monitors),
        }

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        if self.check_finite:
            for key in self.keys:
                value = metrics.get(key)
                if value is not None and not _is_finite(value):
                    return True, f"Divergence: {key} = {value} is not finite at G step {g_step}."
        if g_step < self.warmup_g_steps:
            return False, ""
        d, g = metrics.get(self.d_loss_key), metrics.get(self.g_loss_key)
        violations = []
        if _is_finite(d):
            if self.d_loss_floor is not None and abs(d) < self.d_loss_floor:
                violations.append(
                    f"|{self.d_loss_key}| = {abs(d):.3g} < d_loss_floor {self.d_loss_floor:g} (D has won)"
                )
            if self.d_loss_ceiling is not None and abs(d) > self.d_loss_ceiling:
                violations.append(f"|{self.d_loss_key}| = {abs(d):.3g} > d_loss_ceiling {self.d_loss_ceiling:g}")
        if _is_finite(g) and self.g_loss_ceiling is not None and abs(g) > self.g_loss_ceiling:
            violations.append(f"|{self.g_loss_key}| = {abs(g):.3g} > g_loss_ceiling {self.g_loss_ceiling:g}")
        if not violations:
            self.violation_count, self.first_violation_step = 0, None
            return False, ""
        if self.violation_count == 0:
            self.first_violation_step = g_step
        self.violation_count += 1
        if self.violation_count < self.patience:
            return False, ""
        return True, (
            f"Divergence: {'; '.join(violations)} for {self.violation_count} consecutive checks "
            f"(G steps {self.first_violation_step}..{g_step})."
        )

    def _state(self) -> dict[str, Any]:
        return {"violation_count": self.violation_count, "first_violation_step": self.first_violation_step}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.violation_count = int(state.get("violation_count", 0))
        first = state.get("first_violation_step")
        self.first_violation_step = None if first is None else int(first)



def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Theil-Sen slope: the median of the pairwise slopes ``(y_j - y_i) / (x_j - x_i)`` (robust to outliers).

    Returns 0.0 when fewer than two distinct ``xs`` are given.
    """
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    ]
    return statistics.median(slopes) if slopes else 0.0


def _history_row(row: Sequence[Any]) -> list[Optional[float]]:
    """A ``[g_step, fid, fid_std, recall]`` row read back from a state dict."""
    return [int(row[0]), float(row[1]), None if row[2] is None else float(row[2]),
            None if row[3] is None else float(row[3])]


class _EvaluationRule(StopRule):
    """Shared part of the rules fed once per FID evaluation: input checks, warmup, history, recall guard.

    ``history`` holds ``[g_step, fid, fid_std, recall]`` per evaluation with a finite FID (``fid_std`` and
    ``recall`` are ``None`` when not logged). A non-finite FID is left to the ``Divergence`` rule.
    """

    def _init_common(self, tolerance: float, warmup_g_steps: int, min_evaluations: int,
                     recall_tolerance: Optional[float], monitor: str, noise_key: str, recall_key: str,
                     min_progress: float) -> None:
        name = type(self).__name__
        self.min_progress = _need_number(name, "min_progress", min_progress, 0.0)
        if self.min_progress >= 1.0:
            raise ValueError(f"{name}: min_progress is a share of the first FID and must be < 1, got {min_progress!r}.")
        self.tolerance = _need_number(name, "tolerance", tolerance, 0.0, strict=True)
        if self.tolerance >= 1.0:
            raise ValueError(f"{name}: tolerance is relative and must be < 1 (0.05 = 5 %), got {tolerance!r}.")
        self.warmup_g_steps = _need_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.min_evaluations = _need_int(name, "min_evaluations", min_evaluations, 2)
        self.recall_tolerance = _need_number(name, "recall_tolerance", recall_tolerance, 0.0, optional=True)
        self.monitor = _need_keys(name, "monitor", monitor)[0]
        self.noise_key = _need_keys(name, "noise_key", noise_key)[0]
        self.recall_key = _need_keys(name, "recall_key", recall_key)[0]
        self.history: list[list[Optional[float]]] = []
        self.evaluations = 0
        self.flat_count = 0

    @property
    def keys(self) -> tuple[str, ...]:
        """Every metric name this rule reads."""
        return (self.monitor, self.noise_key, self.recall_key)

    def _common_config(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "warmup_g_steps": self.warmup_g_steps, "min_progress": self.min_progress,
                "min_evaluations": self.min_evaluations, "recall_tolerance": self.recall_tolerance,
                "monitor": self.monitor, "noise_key": self.noise_key, "recall_key": self.recall_key}

    def _record(self, g_step: int, metrics: Mapping[str, float]) -> bool:
        """Append this evaluation; return whether the rule should judge now."""
        value = metrics.get(self.monitor)
        if value is None:
            return False
        self.evaluations += 1
        if not _is_finite(value):
            return False
        std, recall = metrics.get(self.noise_key), metrics.get(self.recall_key)
        self.history.append([int(g_step), float(value), float(std) if _is_finite(std) else None,
                             float(recall) if _is_finite(recall) else None])
        return (g_step >= self.warmup_g_steps and len(self.history) >= self.min_evaluations
                and self.started())

    def takeoff_g_step(self) -> Optional[int]:
        """G step of the first FID below ``(1 - min_progress)`` x the first one (``None``: not yet)."""
        first = self.history[0][1]
        return next((int(row[0]) for row in self.history if row[1] <= (1.0 - self.min_progress) * first), None)

    def started(self) -> bool:
        """Whether the run has taken off, ``min_evaluations`` evaluations ago or more: GANs often sit near their
        first FID for a while (or fall back to it and stay), and a fit over those flat evaluations would call a
        plateau in the middle of the descent that follows."""
        takeoff = self.takeoff_g_step()
        return takeoff is not None and sum(row[0] >= takeoff for row in self.history) >= self.min_evaluations

    def _window(self, g_step: int, fraction: float) -> list[list[Optional[float]]]:
        """Evaluations from G step ``(1 - fraction) * g_step`` on, never before the take-off (at least
        ``min_evaluations`` of them)."""
        start = max((1.0 - fraction) * g_step, self.takeoff_g_step() or 0)
        recent = [row for row in self.history if row[0] >= start]
        return recent if len(recent) >= self.min_evaluations else self.history[-self.min_evaluations:]

    def _recall_rising(self, rows: Sequence[Sequence[Optional[float]]], horizon_steps: float) -> Optional[str]:
        """A message when the recall trend projects a gain above ``recall_tolerance`` over the horizon."""
        if self.recall_tolerance is None:
            return None
        points = [(row[0], row[3]) for row in rows if row[3] is not None]
        if len(points) < self.min_evaluations:
            return None
        slope = theil_sen_slope([p[0] for p in points], [p[1] for p in points])
        if slope * horizon_steps > self.recall_tolerance:
            return f"recall still rising (+{slope * horizon_steps:.3f} projected over {horizon_steps:.0f} G steps)"
        return None

    def _verdict(self, g_step: int, flat: bool, why: str, blocked: Optional[str], patience: int) -> tuple[bool, str]:
        if not flat or blocked:
            self.flat_count = 0
            return False, (f"{type(self).__name__}: {blocked} at G step {g_step}; no plateau." if flat else "")
        self.flat_count += 1
        if self.flat_count < patience:
            return False, ""
        best = min(self.history, key=lambda row: row[1])
        return True, (
            f"FID plateau ({type(self).__name__}): {why} for {self.flat_count} evaluations, at G step {g_step}; "
            f"best {self.monitor} {best[1]:.4g} at G step {best[0]}."
        )

    def _common_state(self) -> dict[str, Any]:
        return {"history": [list(row) for row in self.history], "evaluations": self.evaluations,
                "flat_count": self.flat_count}

    def _load_common_state(self, state: Mapping[str, Any]) -> None:
        self.history = [_history_row(r) for r in state.get("history") or []]
        self.evaluations = int(state.get("evaluations", len(self.history)))
        self.flat_count = int(state.get("flat_count", 0))

    def _state(self) -> dict[str, Any]:
        return self._common_state()

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._load_common_state(state)


class FIDTrend(_EvaluationRule):
    """Stop when the FID's recent trend projects less than ``tolerance`` of improvement over the horizon.

    Rule: at each evaluation (from ``warmup_g_steps`` on, once ``min_evaluations`` FIDs are in), take the
    evaluations of the last ``window`` share of the run (G steps ``(1 - window) * t`` to ``t``) and fit the
    Theil-Sen slope ``b`` of ``log FID`` against the G step. Going on for ``horizon * t`` more G steps is then
    projected to improve the FID by ``1 - exp(b * horizon * t)`` (0 when the trend is flat or rising). When that
    is below ``tolerance`` for ``patience`` evaluations in a row, training stops, unless the recall trend
    (``recall_key``, when logged) projects a gain above ``recall_tolerance`` over the same horizon: then
    coverage is still improving and the plateau is not called.

    Why: a median of pairwise slopes ignores single noisy evaluations (up to ~29 % of them can be outliers),
    so a noisy but improving curve keeps a negative slope and a short pause inside the window does not flatten
    it; the window and horizon grow with the run, so the same defaults fit a run of 2,000 or 50,000 G steps,
    and the tolerance reads like the user's question: "would going on improve the FID by more than 5 %?".

    Args:
        tolerance: Projected relative FID gain under which the run is called flat (0.05 = 5 %).
        horizon: How far ahead to project, as a share of the G steps so far (1.0 = doubling the run), capped at
            what is left of ``budget_g_steps``.
        window: Share of the run (most recent G steps) whose evaluations the trend is fitted on.
        patience: Consecutive flat evaluations before stopping.
        min_evaluations: Fewest evaluations in a fit (and before any decision).
        recall_tolerance: Projected absolute recall gain that blocks a stop; ``None`` ignores recall.
        warmup_g_steps: No decision before this G step.
        monitor: FID metric name. ``noise_key``: its measurement noise (unused here). ``recall_key``: recall.
        min_progress: The run takes off at the first FID below ``(1 - min_progress)`` x the first one; no plateau
            before ``min_evaluations`` evaluations from there on, and no fit reaches back before it (a warmup that
            needs no G-step count per dataset).
        budget_g_steps: The run's budget in G steps: nothing beyond it is projected ("would going on to the end of
            the budget gain more than ``tolerance``?"). ``None``: :class:`EarlyTermination` fills it in from the
            Trainer's ``max_steps`` (left uncapped when the Trainer has none).
    """

    reason = StopReason.FID_PLATEAU

    def __init__(
        self,
        tolerance: float = 0.05,
        horizon: float = 4.0,
        window: float = 0.5,
        patience: int = 2,
        min_evaluations: int = 5,
        recall_tolerance: Optional[float] = 0.02,
        warmup_g_steps: int = 0,
        monitor: str = "val/fid",
        noise_key: str = "val/fid_std",
        recall_key: str = "val/recall",
        min_progress: float = 0.5,
        budget_g_steps: Optional[int] = None,
    ) -> None:
        name = type(self).__name__
        self._init_common(tolerance, warmup_g_steps, min_evaluations, recall_tolerance, monitor, noise_key, recall_key,
                          min_progress)
        self.budget_g_steps = None if budget_g_steps is None else _need_int(name, "budget_g_steps", budget_g_steps, 1)
        self.horizon = _need_number(name, "horizon", horizon, 0.0, strict=True)
        self.window = _need_number(name, "window", window, 0.0, strict=True)
        if self.window > 1.0:
            raise ValueError(f"{name}: window is a share of the run and must be <= 1, got {window!r}.")
        self.patience = _need_int(name, "patience", patience, 1)

    def config(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "window": self.window, "patience": self.patience,
                "budget_g_steps": self.budget_g_steps, **self._common_config()}

    def horizon_steps(self, g_step: int) -> float:
        """G steps the projection looks ahead: ``horizon * g_step``, capped at what is left of the budget."""
        steps = self.horizon * g_step
        if self.budget_g_steps is not None:
            steps = min(steps, float(max(0, self.budget_g_steps - g_step)))
        return steps

    def projected_gain(self, g_step: int) -> float:
        """Relative FID improvement the current trend projects over the horizon (0 when flat or rising)."""
        rows = self._window(g_step, self.window)
        slope = theil_sen_slope([r[0] for r in rows], [math.log(max(r[1], 1e-300)) for r in rows])
        return max(0.0, 1.0 - math.exp(slope * self.horizon_steps(g_step)))

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        if not self._record(g_step, metrics):
            return False, ""
        gain = self.projected_gain(g_step)
        horizon_steps = self.horizon_steps(g_step)
        blocked = self._recall_rising(self._window(g_step, self.window), horizon_steps)
        why = (f"{self._fit_description()} projects a gain of {gain:.1%} < {self.tolerance:.1%} over the next "
               f"{horizon_steps:.0f} G steps")
        # At the end of the budget there is nothing left to save: the run completes, it is not a plateau.
        return self._verdict(g_step, gain < self.tolerance and horizon_steps > 0, why, blocked, self.patience)

    def _fit_description(self) -> str:
        return f"the trend of log {self.monitor} over the last {self.window:.0%} of the run"


class FIDNoisePlateau(_EvaluationRule):
    """Stop when the FID has not improved by more than its measurement noise for a share of the run.

    Rule: an evaluation improves on the reference (the FID of the last improvement) when
    ``fid < ref * (1 - tolerance * min_delta_share) - z * sqrt(std^2 + std_ref^2)``, with ``std`` the
    logged measurement noise of the FID (``noise_key``, e.g. a bootstrap standard deviation; 0 when not
    logged). When no evaluation improved during the last ``patience`` share of the run (G steps since the
    last improvement >= ``patience * t``) and for at least ``min_evaluations`` evaluations, training stops,
    unless recall is still rising (see :class:`FIDTrend`).

    Args:
        tolerance: Relative improvement scale (0.05 = 5 %); ``min_delta_share`` of it must be beaten.
        z: Noise multiple an improvement must exceed.
        patience: Share of the run without improvement before stopping (0.3 = the last 30 % of G steps).
        min_delta_share: Share of ``tolerance`` an improvement must beat besides the noise.
        min_evaluations: Fewest evaluations without improvement before stopping.
        recall_tolerance, warmup_g_steps, monitor, noise_key, recall_key, min_progress: As in :class:`FIDTrend`.
    """

    reason = StopReason.FID_PLATEAU

    def __init__(
        self,
        tolerance: float = 0.05,
        z: float = 2.0,
        patience: float = 0.3,
        min_delta_share: float = 0.2,
        min_evaluations: int = 5,
        recall_tolerance: Optional[float] = 0.02,
        warmup_g_steps: int = 0,
        monitor: str = "val/fid",
        noise_key: str = "val/fid_std",
        recall_key: str = "val/recall",
        min_progress: float = 0.5,
    ) -> None:
        name = type(self).__name__
        self._init_common(tolerance, warmup_g_steps, min_evaluations, recall_tolerance, monitor, noise_key, recall_key,
                          min_progress)
        self.z = _need_number(name, "z", z, 0.0)
        self.patience = _need_number(name, "patience", patience, 0.0, strict=True)
        if self.patience >= 1.0:
            raise ValueError(f"{name}: patience is a share of the run and must be < 1, got {patience!r}.")
        self.min_delta_share = _need_number(name, "min_delta_share", min_delta_share, 0.0)
        self.reference: Optional[list[Optional[float]]] = None

    def config(self) -> dict[str, Any]:
        return {"z": self.z, "patience": self.patience, "min_delta_share": self.min_delta_share,
                **self._common_config()}

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        judge = self._record(g_step, metrics)
        if not self.history or self.history[-1][0] != g_step:
            return False, ""
        row = self.history[-1]
        ref = self.reference
        if ref is None:
            self.reference = row
            return False, ""
        noise = math.sqrt((row[2] or 0.0) ** 2 + (ref[2] or 0.0) ** 2)
        if row[1] < ref[1] * (1.0 - self.tolerance * self.min_delta_share) - self.z * noise:
            self.reference, self.flat_count = row, 0
            return False, f"{self.monitor} improved beyond its noise to {row[1]:.4g} at G step {g_step}."
        if not judge:
            return False, ""
        since = sum(1 for r in self.history if r[0] > ref[0])
        flat = g_step - ref[0] >= self.patience * g_step and since >= self.min_evaluations
        blocked = self._recall_rising(self._window(g_step, self.patience), self.patience * g_step)
        why = (f"no improvement beyond {self.z:g} x the measurement noise since G step {ref[0]} "
               f"({ref[1]:.4g})")
        return self._verdict(g_step, flat, why, blocked, 1)

    def _state(self) -> dict[str, Any]:
        return {**self._common_state(), "reference": None if self.reference is None else list(self.reference)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._load_common_state(state)
        ref = state.get("reference")
        self.reference = None if ref is None else _history_row(ref)


def fit_power_law(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of ``f(t) = c + a * t ** -alpha`` with ``c, a >= 0``; ``alpha`` on a grid in (0, 3].

    Returns:
        ``(c, a, alpha)``; ``a = 0`` (and ``c`` the mean) when the data do not decrease.
    """
    mean_y = statistics.fmean(values)
    best = (sum((y - mean_y) ** 2 for y in values), mean_y, 0.0, 1.0)
    for alpha in [0.05 * i for i in range(1, 61)]:
        xs = [t ** -alpha for t in steps]
        mean_x = statistics.fmean(xs)
        sxx = sum((x - mean_x) ** 2 for x in xs)
        if sxx <= 0:
            continue
        a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / sxx
        c = mean_y - a * mean_x
        if c < 0:  # the floor of a distance is >= 0: refit through the origin
            c, a = 0.0, sum(x * y for x, y in zip(xs, values)) / sum(x * x for x in xs)
        if a <= 0:
            continue
        sse = sum((c + a * x - y) ** 2 for x, y in zip(xs, values))
        if sse < best[0]:
            best = (sse, c, a, alpha)
    return best[1], best[2], best[3]


class FIDPowerLaw(FIDTrend):
    """Stop when a power-law learning curve fitted to the FID projects less than ``tolerance`` of gain.

    Rule: fit ``FID(t) = c + a * t^-alpha`` (Domhan et al., IJCAI 2015, use this among their curve family) to
    the evaluations of the last ``window`` share of the run; the projected gain over ``h`` more G steps
    (:meth:`FIDTrend.horizon_steps`) is ``(FID(t) - FID(t + h)) / FID(t)``. Below ``tolerance`` for ``patience`` evaluations
    in a row, training stops, unless recall is still rising (see :class:`FIDTrend`).

    Args: as :class:`FIDTrend`.
    """

    def projected_gain(self, g_step: int) -> float:
        rows = self._window(g_step, self.window)
        c, a, alpha = fit_power_law([float(max(r[0], 1)) for r in rows], [r[1] for r in rows])
        now = c + a * max(g_step, 1) ** -alpha
        later = c + a * (max(g_step, 1) + self.horizon_steps(g_step)) ** -alpha
        return max(0.0, (now - later) / now) if now > 0 else 0.0

    def _fit_description(self) -> str:
        return f"a power law fitted to {self.monitor}"


class Collapse(StopRule):
    """Stop a run that mode-collapses: recall falling while the FID rises, for ``patience`` evaluations.

    Rule: at each evaluation (from ``warmup_g_steps`` on) the smoothed FID and recall are the medians of the
    last ``window`` evaluations. The run is collapsing when the smoothed recall is below
    ``(1 - recall_drop)`` times the best smoothed recall so far AND the smoothed FID is above
    ``(1 + fid_rise)`` times the best smoothed FID so far. ``patience`` collapsing evaluations in a row stop
    training with the reason ``collapsed``; the callback then restores the best (pre-collapse) generator.
    Without a logged recall the rule never fires, nor before the best smoothed recall reaches ``min_recall``: a
    relative fall of a recall that never left zero is sampling noise, not a collapse (the study's MLP GANs on
    Fashion-MNIST sit at recall 0.00-0.01, and one was called collapsed on a fall from 0.01 to 0.00).

    Args:
        recall_drop: Relative fall of the smoothed recall from its best (0.5 = halved).
        fid_rise: Relative rise of the smoothed FID above its best (0 = any rise: the FID is not improving).
        window: Evaluations in the running medians.
        patience: Consecutive collapsing evaluations before stopping.
        warmup_g_steps: No decision before this G step.
        min_recall: No decision before the best smoothed recall reaches this (absolute, recall is in [0, 1]).
        monitor: FID metric name. ``recall_key``: recall metric name.
    """

    reason = StopReason.COLLAPSED

    def __init__(
        self,
        recall_drop: float = 0.5,
        fid_rise: float = 0.0,
        window: int = 3,
        patience: int = 2,
        warmup_g_steps: int = 0,
        min_recall: float = 0.1,
        monitor: str = "val/fid",
        recall_key: str = "val/recall",
    ) -> None:
        name = type(self).__name__
        self.min_recall = _need_number(name, "min_recall", min_recall, 0.0)
        if self.min_recall >= 1.0:
            raise ValueError(f"{name}: min_recall is a recall (in [0, 1]) and must be < 1, got {min_recall!r}.")
        self.recall_drop = _need_number(name, "recall_drop", recall_drop, 0.0, strict=True)
        if self.recall_drop >= 1.0:
            raise ValueError(f"{name}: recall_drop is relative and must be < 1, got {recall_drop!r}.")
        self.fid_rise = _need_number(name, "fid_rise", fid_rise, 0.0)
        self.window = _need_int(name, "window", window, 1)
        self.patience = _need_int(name, "patience", patience, 1)
        self.warmup_g_steps = _need_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.monitor = _need_keys(name, "monitor", monitor)[0]
        self.recall_key = _need_keys(name, "recall_key", recall_key)[0]
        self.recent: list[list[float]] = []
        self.best_fid: Optional[float] = None
        self.best_recall: Optional[float] = None
        self.count = 0

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.monitor, self.recall_key)

    def config(self) -> dict[str, Any]:
        return {"recall_drop": self.recall_drop, "fid_rise": self.fid_rise, "window": self.window,
                "patience": self.patience, "warmup_g_steps": self.warmup_g_steps, "min_recall": self.min_recall,
                "monitor": self.monitor, "recall_key": self.recall_key}

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        fid, recall = metrics.get(self.monitor), metrics.get(self.recall_key)
        if not (_is_finite(fid) and _is_finite(recall)):
            return False, ""
        self.recent = (self.recent + [[float(fid), float(recall)]])[-self.window:]
        sm_fid = statistics.median(r[0] for r in self.recent)
        sm_recall = statistics.median(r[1] for r in self.recent)
        self.best_fid = sm_fid if self.best_fid is None else min(self.best_fid, sm_fid)
        self.best_recall = sm_recall if self.best_recall is None else max(self.best_recall, sm_recall)
        collapsing = (g_step >= self.warmup_g_steps and self.best_recall >= self.min_recall
                      and sm_recall < (1 - self.recall_drop) * self.best_recall
                      and sm_fid > (1 + self.fid_rise) * self.best_fid)
        self.count = self.count + 1 if collapsing else 0
        if self.count < self.patience:
            return False, ""
        return True, (
            f"Collapsed: the smoothed {self.recall_key} fell to {sm_recall:.3g} (best {self.best_recall:.3g}) while "
            f"the smoothed {self.monitor} rose to {sm_fid:.4g} (best {self.best_fid:.4g}), for {self.count} "
            f"evaluations, at G step {g_step}."
        )

    def _state(self) -> dict[str, Any]:
        return {"recent": [list(r) for r in self.recent], "best_fid": self.best_fid,
                "best_recall": self.best_recall, "count": self.count}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.recent = [[float(a), float(b)] for a, b in state.get("recent") or []][-self.window:]
        self.best_fid = None if state.get("best_fid") is None else float(state["best_fid"])
        self.best_recall = None if state.get("best_recall") is None else float(state["best_recall"])
        self.count = int(state.get("count", 0))


#: Rules that can fill EarlyTermination's ``fid_plateau`` slot (fed once per FID evaluation).
FID_RULES: tuple[type, ...] = (FIDPlateau, FIDTrend, FIDNoisePlateau, FIDPowerLaw)


__all__ = ["CODE_REASONS", "FID_RULES", "REASON_CODES", "Collapse", "Divergence", "FIDNoisePlateau", "FIDPlateau",
           "FIDPowerLaw", "FIDTrend", "LossPlateau", "StopReason", "StopRule", "fit_power_law", "theil_sen_slope"]

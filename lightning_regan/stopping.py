"""Pure stop rules for GAN training: loss plateau, FID plateau, divergence.

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
    DIVERGENCE = "divergence"


# Precedence when several ranks or rules want to stop at once: the largest code wins.
REASON_CODES: dict[Optional[StopReason], int] = {
    None: 0,
    StopReason.LOSS_PLATEAU: 1,
    StopReason.FID_PLATEAU: 2,
    StopReason.DIVERGENCE: 3,
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


__all__ = ["CODE_REASONS", "REASON_CODES", "Divergence", "FIDPlateau", "LossPlateau", "StopReason", "StopRule"]

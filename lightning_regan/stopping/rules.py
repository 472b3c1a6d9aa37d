"""The stop rules: loss plateau, metric plateau (patience, noise-aware, trend, learning curve), collapse, divergence.

The metric rules read any logged metric (``val/mmd``, ``val/fid``, ...). Their names before they were metric-neutral
(``FIDPlateau``, ``FIDNoisePlateau``, ``FIDTrend``, ``FIDPowerLaw``: :data:`RENAMED`) remain as deprecated aliases.

No Lightning here. Each rule class holds configuration only; its state class (``new_state()``) is the small state
machine fed ``update(g_step, metrics)`` with plain floats, answering ``(should_stop, message)``.
:class:`~lightning_regan.callbacks.EarlyTermination` feeds them from ``trainer.callback_metrics``, reduces the
decision over ranks and stops the Trainer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from lightning_regan.stopping.base import (
    RuleState,
    StopReason,
    StopRule,
    check_keys,
    check_mode,
    deprecated_alias,
    is_finite,
    rule_name,
)
from lightning_regan.stopping.fits import fit_power_law, theil_sen_slope
from lightning_regan.validation import check_bool, check_int, check_number


def _below_one(owner: str, name: str, value: Any, what: str, strict: bool = False) -> float:
    """A number in [0, 1) (``strict``: (0, 1)); ``what`` says why it must be below 1."""
    number = check_number(owner, name, value, 0.0, strict=strict)
    if number >= 1.0:
        raise ValueError(f"{owner}: {name} {what} and must be < 1, got {value!r}.")
    return number


# ---------------------------------------------------------------------------------------------- LossPlateau
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
        until_logged: A metric name (e.g. ``val/fid``): the rule switches off for the rest of the run once that
            metric has been logged. GAN losses settle long before the samples stop improving, so where a quality
            metric is measured its rule should decide (see ``docs/studies/early_stopping.md``). ``None``: always on.
    """

    reason = StopReason.LOSS_PLATEAU
    cadence = "step"

    def __init__(
        self,
        monitors: Union[str, Sequence[str]] = ("train/g_loss", "train/d_loss"),
        window: int = 100,
        min_delta: float = 0.02,
        patience: int = 5,
        warmup_g_steps: int = 500,
        check_every_n_g_steps: int = 100,
        scale_floor: float = 0.1,
        until_logged: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self.monitors = check_keys(name, "monitors", monitors)
        self.monitor = self.monitors[0]
        self.window = check_int(name, "window", window, 1)
        self.min_delta = check_number(name, "min_delta", min_delta, 0.0)
        self.patience = check_int(name, "patience", patience, 1)
        self.warmup_g_steps = check_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.check_every_n_g_steps = check_int(name, "check_every_n_g_steps", check_every_n_g_steps, 1)
        self.scale_floor = check_number(name, "scale_floor", scale_floor, 0.0, strict=True)
        self.until_logged = None if until_logged is None else check_keys(name, "until_logged", until_logged)[0]

    @property
    def alpha(self) -> float:
        """EMA weight of the newest value."""
        return 2.0 / (self.window + 1.0)

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.monitors, *((self.until_logged,) if self.until_logged else ()))

    @property
    def required_keys(self) -> tuple[str, ...]:
        return self.monitors


class LossPlateauState(RuleState):
    """Per-run state of :class:`LossPlateau`: the EMAs, their references and the count of flat checks."""

    rule: LossPlateau
    fields = ("ema", "seen", "reference", "wait_count", "last_check_step", "off")

    def __init__(self, rule: LossPlateau) -> None:
        super().__init__(rule)
        self.ema: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self.reference: dict[str, float] = {}
        self.wait_count = 0
        self.last_check_step: Optional[int] = None
        self.off = False

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        if self.off:
            return False, ""
        if rule.until_logged is not None and rule.until_logged in metrics:
            self.off = True
            return False, f"LossPlateau: {rule.until_logged} is logged, so its rule decides; the loss plateau is off."
        for key in rule.monitors:
            value = metrics.get(key)
            if not is_finite(value):  # missing or non-finite: the Divergence rule's business
                continue
            previous = self.ema.get(key)
            self.ema[key] = float(value) if previous is None else previous + rule.alpha * (value - previous)
            self.seen[key] = self.seen.get(key, 0) + 1

        if g_step < rule.warmup_g_steps:
            return False, ""
        if self.last_check_step is not None and g_step - self.last_check_step < rule.check_every_n_g_steps:
            return False, ""
        ready = [k for k in rule.monitors if self.seen.get(k, 0) >= rule.window]
        if not ready:
            return False, ""
        self.last_check_step = g_step

        moved = []
        for key in ready:
            ref = self.reference.get(key)
            if ref is None or abs(self.ema[key] - ref) >= rule.min_delta * max(abs(ref), rule.scale_floor):
                self.reference[key] = self.ema[key]
                moved.append(key)
        if moved:
            self.wait_count = 0
            return False, f"Smoothed {', '.join(moved)} moved at G step {g_step}."
        self.wait_count += 1
        if self.wait_count < rule.patience:
            return False, ""
        values = ", ".join(f"{k} ~ {self.ema[k]:.4g}" for k in ready)
        return True, (
            f"Loss plateau: the smoothed losses ({values}) moved less than {rule.min_delta:.1%} for "
            f"{self.wait_count} checks (every {rule.check_every_n_g_steps} G steps), at G step {g_step}."
        )


LossPlateau.state_class = LossPlateauState


# ---------------------------------------------------------------------------------------------- Plateau
class Plateau(StopRule):
    """Stop when the smoothed metric (FID by default) has not improved on its best for ``patience`` evaluations.

    Rule: each evaluation's value joins a window of the last ``window`` finite values; the smoothed value is
    their median. It improves when it beats the best by ``min_delta * |best|`` (lower for ``mode="min"``, higher
    for ``mode="max"``; ``min_delta`` is relative: FID scales differ by orders of magnitude between datasets and
    feature extractors), and then ``best`` becomes the smoothed value and the count restarts. Otherwise, from
    ``warmup_g_steps`` on, the evaluation counts towards ``patience``; a non-finite value counts as an evaluation
    without improvement.

    Why a median: FID is not monotone (StyleGAN2-ADA #68: 48.7 -> 84.0 -> 56.2). With ``window >= 3``
    a one-evaluation spike never becomes the smoothed value, while an EMA would carry it over several
    evaluations; a sustained change shows after ``window // 2 + 1`` evaluations. Comparing with the best
    (not the previous value) means a noisy but improving metric keeps resetting the count, and a spike
    followed by recovery stops only if the recovery takes ``patience`` evaluations without a new best.

    Args:
        patience: Evaluations without improvement before stopping.
        min_delta: Relative improvement of the smoothed value over its best that counts (0.01 = 1 %).
        window: Number of recent evaluations whose median is the smoothed value (1 = no smoothing).
        warmup_g_steps: Evaluations before this G step never count towards ``patience``.
        monitor: Name of the metric (``val/fid``, ``val/mmd``, ``val/class_accuracy``, ...).
        mode: ``"min"`` when lower is better (distances), ``"max"`` when higher is (accuracy).
        step_key: The logged G step of each evaluation (``None``: ``<monitor>_g_step``; ``val/class_accuracy`` is
            logged with ``val/fid_g_step``).
    """

    reason = StopReason.PLATEAU
    checkpoint_name = "FIDPlateau"  # its name before the rename: older checkpoints resume

    def __init__(
        self,
        patience: int = 4,
        min_delta: float = 0.01,
        window: int = 3,
        warmup_g_steps: int = 0,
        monitor: str = "val/fid",
        mode: str = "min",
        step_key: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self.patience = check_int(name, "patience", patience, 1)
        self.min_delta = _below_one(name, "min_delta", min_delta, "is relative (0.01 = 1 %)")
        self.window = check_int(name, "window", window, 1)
        self.warmup_g_steps = check_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.monitor = check_keys(name, "monitor", monitor)[0]
        self.mode = check_mode(name, mode)
        self.step_key = None if step_key is None else check_keys(name, "step_key", step_key)[0]


class PlateauState(RuleState):
    """Per-run state of :class:`Plateau`: the recent values, the best smoothed value and the count."""

    rule: Plateau
    fields = ("recent", "best", "best_step", "wait_count", "evaluations")

    def __init__(self, rule: Plateau) -> None:
        super().__init__(rule)
        self.recent: list[float] = []
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.wait_count = 0
        self.evaluations = 0

    @property
    def smoothed(self) -> Optional[float]:
        """Median of the recent finite values (``None`` before the first one)."""
        return statistics.median(self.recent) if self.recent else None

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        value = metrics.get(rule.monitor)
        if value is None:  # no evaluation at this step
            return False, ""
        self.evaluations += 1
        if is_finite(value):
            self.recent = (self.recent + [float(value)])[-rule.window:]
            smoothed = self.smoothed
            assert smoothed is not None
            sign = 1.0 if rule.mode == "min" else -1.0
            if self.best is None or sign * smoothed < sign * self.best - rule.min_delta * abs(self.best):
                self.best, self.best_step, self.wait_count = smoothed, g_step, 0
                return False, f"Smoothed {rule.monitor} improved to {smoothed:.4g} at G step {g_step}."
        if g_step < rule.warmup_g_steps:
            return False, ""
        self.wait_count += 1
        if self.wait_count < rule.patience:
            return False, ""
        best = "none" if self.best is None else f"{self.best:.4g} at G step {self.best_step}"
        return True, (
            f"Plateau: the smoothed {rule.monitor} (median of the last {rule.window}) did not improve "
            f"by {rule.min_delta:.1%} on its best ({best}) for {self.wait_count} evaluations; "
            f"last value {float(value):.4g} at G step {g_step}."
        )


Plateau.state_class = PlateauState


# ---------------------------------------------------------------------------------------------- Divergence
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
    cadence = "step"

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
        self.check_finite = check_bool(name, "check_finite", check_finite)
        self.d_loss_floor = check_number(name, "d_loss_floor", d_loss_floor, 0.0, strict=True, optional=True)
        self.d_loss_ceiling = check_number(name, "d_loss_ceiling", d_loss_ceiling, 0.0, strict=True, optional=True)
        self.g_loss_ceiling = check_number(name, "g_loss_ceiling", g_loss_ceiling, 0.0, strict=True, optional=True)
        floor, ceiling = self.d_loss_floor, self.d_loss_ceiling
        if floor is not None and ceiling is not None and floor >= ceiling:
            raise ValueError(
                f"{name}: d_loss_floor ({d_loss_floor}) must be below d_loss_ceiling ({d_loss_ceiling})."
            )
        self.patience = check_int(name, "patience", patience, 1)
        self.warmup_g_steps = check_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.d_loss_key = check_keys(name, "d_loss_key", d_loss_key)[0]
        self.g_loss_key = check_keys(name, "g_loss_key", g_loss_key)[0]
        self.monitors = check_keys(name, "monitors", monitors)
        self.monitor = self.d_loss_key

    @property
    def keys(self) -> tuple[str, ...]:
        """Every metric name this rule reads."""
        return tuple(dict.fromkeys((*self.monitors, self.d_loss_key, self.g_loss_key)))


class DivergenceState(RuleState):
    """Per-run state of :class:`Divergence`: the count of consecutive violating checks."""

    rule: Divergence
    fields = ("violation_count", "first_violation_step")

    def __init__(self, rule: Divergence) -> None:
        super().__init__(rule)
        self.violation_count = 0
        self.first_violation_step: Optional[int] = None

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        if rule.check_finite:
            for key in rule.keys:
                value = metrics.get(key)
                if value is not None and not is_finite(value):
                    return True, f"Divergence: {key} = {value} is not finite at G step {g_step}."
        if g_step < rule.warmup_g_steps:
            return False, ""
        d, g = metrics.get(rule.d_loss_key), metrics.get(rule.g_loss_key)
        violations = []
        if is_finite(d):
            if rule.d_loss_floor is not None and abs(d) < rule.d_loss_floor:
                violations.append(
                    f"|{rule.d_loss_key}| = {abs(d):.3g} < d_loss_floor {rule.d_loss_floor:g} (D has won)"
                )
            if rule.d_loss_ceiling is not None and abs(d) > rule.d_loss_ceiling:
                violations.append(f"|{rule.d_loss_key}| = {abs(d):.3g} > d_loss_ceiling {rule.d_loss_ceiling:g}")
        if is_finite(g) and rule.g_loss_ceiling is not None and abs(g) > rule.g_loss_ceiling:
            violations.append(f"|{rule.g_loss_key}| = {abs(g):.3g} > g_loss_ceiling {rule.g_loss_ceiling:g}")
        if not violations:
            self.violation_count, self.first_violation_step = 0, None
            return False, ""
        if self.violation_count == 0:
            self.first_violation_step = g_step
        self.violation_count += 1
        if self.violation_count < rule.patience:
            return False, ""
        return True, (
            f"Divergence: {'; '.join(violations)} for {self.violation_count} consecutive checks "
            f"(G steps {self.first_violation_step}..{g_step})."
        )


Divergence.state_class = DivergenceState


# ---------------------------------------------------------------------------------------------- trend rules
class _EvaluationRule(StopRule):
    """Shared configuration of the rules fed once per evaluation of a distance (FID, KID, MMD): input checks,
    warmup, recall guard. These project relative falls of a distance, so their mode is ``"min"``."""

    def _init_common(self, tolerance: float, warmup_g_steps: int, min_evaluations: int,
                     recall_tolerance: Optional[float], monitor: str, noise_key: Optional[str], recall_key: str,
                     min_progress: float, mode: str, step_key: Optional[str]) -> None:
        name = type(self).__name__
        if mode != "min":
            raise ValueError(
                f"{name}: mode must be 'min' (it projects the relative fall of a distance such as FID), got "
                f"{mode!r}; for a metric where higher is better use Plateau(mode='max')."
            )
        self.mode = mode
        self.min_progress = _below_one(name, "min_progress", min_progress, "is a share of the first value")
        self.tolerance = _below_one(name, "tolerance", tolerance, "is relative (0.05 = 5 %)", strict=True)
        self.warmup_g_steps = check_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.min_evaluations = check_int(name, "min_evaluations", min_evaluations, 2)
        self.recall_tolerance = check_number(name, "recall_tolerance", recall_tolerance, 0.0, optional=True)
        self.monitor = check_keys(name, "monitor", monitor)[0]
        self.noise_key = check_keys(name, "noise_key", noise_key if noise_key is not None else f"{self.monitor}_std")[0]
        self.recall_key = check_keys(name, "recall_key", recall_key)[0]
        self.step_key = None if step_key is None else check_keys(name, "step_key", step_key)[0]

    def _init_projection(self, window: float, horizon: float, budget_g_steps: Optional[int]) -> None:
        """The settings of the rules that project a fit of the recent run ahead: the window (a share of the run, in
        (0, 1]), the horizon (> 0) and the budget (G steps, or ``None``)."""
        name = type(self).__name__
        self.window = check_number(name, "window", window, 0.0, strict=True)
        if self.window > 1.0:
            raise ValueError(f"{name}: window is a share of the run and must be <= 1, got {window!r}.")
        self.horizon = check_number(name, "horizon", horizon, 0.0, strict=True)
        self.budget_g_steps = check_int(name, "budget_g_steps", budget_g_steps, 1, optional=True)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every metric name this rule reads."""
        return (self.monitor, self.noise_key, self.recall_key)

    @property
    def required_keys(self) -> tuple[str, ...]:
        return (self.monitor,)


class _EvaluationState(RuleState):
    """Shared state of the evaluation rules: ``history`` holds ``[g_step, value, std, recall]`` per evaluation
    with a finite value (``std`` and ``recall`` are ``None`` when not logged). A non-finite value is left to the
    ``Divergence`` rule."""

    rule: _EvaluationRule
    fields: tuple[str, ...] = ("history", "evaluations", "flat_count")

    def __init__(self, rule: _EvaluationRule) -> None:
        super().__init__(rule)
        self.history: list[list[Optional[float]]] = []
        self.evaluations = 0
        self.flat_count = 0

    def _record(self, g_step: int, metrics: Mapping[str, float]) -> bool:
        """Append this evaluation; return whether the rule should judge now."""
        rule = self.rule
        value = metrics.get(rule.monitor)
        if value is None:
            return False
        self.evaluations += 1
        if not is_finite(value):
            return False
        std, recall = metrics.get(rule.noise_key), metrics.get(rule.recall_key)
        self.history.append([int(g_step), float(value), float(std) if is_finite(std) else None,
                             float(recall) if is_finite(recall) else None])
        return (g_step >= rule.warmup_g_steps and len(self.history) >= self.fit_minimum()
                and self.started(self.fit_minimum()))

    def fit_minimum(self) -> int:
        """Fewest evaluations (since the take-off) a fit, and so a verdict, uses."""
        return self.rule.min_evaluations

    def takeoff_g_step(self) -> Optional[int]:
        """G step of the first value below ``(1 - min_progress)`` x the first one (``None``: not yet)."""
        first = self.history[0][1]
        return next((int(row[0]) for row in self.history if row[1] <= (1.0 - self.rule.min_progress) * first), None)

    def started(self, minimum: Optional[int] = None) -> bool:
        """Whether the run has taken off, ``minimum`` (default ``min_evaluations``) evaluations ago or more: GANs
        often sit near their first FID for a while (or fall back to it and stay), and a fit over those flat
        evaluations would call a plateau in the middle of the descent that follows."""
        takeoff = self.takeoff_g_step()
        minimum = self.rule.min_evaluations if minimum is None else minimum
        return takeoff is not None and sum(row[0] >= takeoff for row in self.history) >= minimum

    def _window(self, g_step: int, fraction: float) -> list[list[Optional[float]]]:
        """Evaluations from G step ``(1 - fraction) * g_step`` on, never before the take-off (at least
        :meth:`fit_minimum` of them)."""
        start = max((1.0 - fraction) * g_step, self.takeoff_g_step() or 0)
        recent = [row for row in self.history if row[0] >= start]
        minimum = self.fit_minimum()
        return recent if len(recent) >= minimum else self.history[-minimum:]

    def _recall_rising(self, rows: Sequence[Sequence[Optional[float]]], horizon_steps: float) -> Optional[str]:
        """A message when the recall trend projects a gain above ``recall_tolerance`` over the horizon."""
        rule = self.rule
        if rule.recall_tolerance is None:
            return None
        points = [(row[0], row[3]) for row in rows if row[3] is not None]
        if len(points) < self.fit_minimum():
            return None
        slope = theil_sen_slope([p[0] for p in points], [p[1] for p in points])
        if slope * horizon_steps > rule.recall_tolerance:
            return f"recall still rising (+{slope * horizon_steps:.3f} projected over {horizon_steps:.0f} G steps)"
        return None

    def _verdict(self, g_step: int, flat: bool, why: str, blocked: Optional[str], patience: int) -> tuple[bool, str]:
        if not flat or blocked:
            self.flat_count = 0
            return False, (f"{rule_name(self.rule)}: {blocked} at G step {g_step}; no plateau." if flat else "")
        self.flat_count += 1
        if self.flat_count < patience:
            return False, ""
        best = min(self.history, key=lambda row: row[1])
        return True, (
            f"Plateau ({rule_name(self.rule)}): {why} for {self.flat_count} evaluations, at G step {g_step}; "
            f"best {self.rule.monitor} {best[1]:.4g} at G step {best[0]}."
        )


class LogLinearTrend(_EvaluationRule):
    """Stop when the metric's recent log-linear trend projects less than ``tolerance`` of improvement over the horizon.

    Rule: at each evaluation (from ``warmup_g_steps`` on, once ``min_evaluations`` values are in), take the
    evaluations of the last ``window`` share of the run (G steps ``(1 - window) * t`` to ``t``) and fit the
    Theil-Sen slope ``b`` of ``log value`` against the G step (a line in log value: an exponential decay).
    Going on for ``horizon * t`` more G steps is then projected to improve the metric by
    ``1 - exp(b * horizon * t)`` (0 when the trend is flat or rising). When that
    is below ``tolerance`` for ``patience`` evaluations in a row, training stops, unless the recall trend
    (``recall_key``, when logged) projects a gain above ``recall_tolerance`` over the same horizon: then
    coverage is still improving and the plateau is not called.

    Why: a median of pairwise slopes ignores single noisy evaluations (up to ~29 % of them can be outliers),
    so a noisy but improving curve keeps a negative slope and a short pause inside the window does not flatten
    it; the window and horizon grow with the run, so the same defaults fit a run of 2,000 or 50,000 G steps,
    and the tolerance reads like the user's question: "would going on improve the metric by more than 5 %?".
    :class:`Trend` (the default) fits a power law instead: on long training curves this one projects gains that a
    decelerating curve never delivers. Formerly ``FIDTrend`` (the default rule of ``early_stopping=trend_v5``).

    Args:
        tolerance: Projected relative gain under which the run is called flat (0.05 = 5 %).
        horizon: How far ahead to project, as a share of the G steps so far (1.0 = doubling the run), capped at
            what is left of ``budget_g_steps``.
        window: Share of the run (most recent G steps) whose evaluations the trend is fitted on.
        patience: Consecutive flat evaluations before stopping.
        min_evaluations: Fewest evaluations in a fit (and before any decision).
        recall_tolerance: Projected absolute recall gain that blocks a stop; ``None`` ignores recall.
        warmup_g_steps: No decision before this G step.
        monitor: The distance (``val/fid``, ``val/kid``, ``val/mmd``). ``noise_key``: its measurement noise (unused
            here; ``None``: ``<monitor>_std``). ``recall_key``: recall.
        min_progress: The run takes off at the first value below ``(1 - min_progress)`` x the first one; no plateau
            before ``min_evaluations`` evaluations from there on, and no fit reaches back before it (a warmup that
            needs no G-step count per dataset).
        budget_g_steps: The run's budget in G steps: nothing beyond it is projected ("would going on to the end of
            the budget gain more than ``tolerance``?"). ``None``: :class:`EarlyTermination` gives the run's state the
            Trainer's ``max_steps`` (left uncapped when the Trainer has none).
        mode: ``"min"`` only (a distance).
        step_key: The logged G step of each evaluation (``None``: ``<monitor>_g_step``).
    """

    checkpoint_name = "FIDTrend"  # its name before the rename: older checkpoints resume

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
        noise_key: Optional[str] = None,
        recall_key: str = "val/recall",
        min_progress: float = 0.5,
        budget_g_steps: Optional[int] = None,
        mode: str = "min",
        step_key: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self._init_common(tolerance, warmup_g_steps, min_evaluations, recall_tolerance, monitor, noise_key, recall_key,
                          min_progress, mode, step_key)
        self._init_projection(window, horizon, budget_g_steps)
        self.patience = check_int(name, "patience", patience, 1)


class LogLinearTrendState(_EvaluationState):
    """Per-run state of :class:`LogLinearTrend`; ``budget_g_steps`` starts as the rule's and may be set by the caller
    (``EarlyTermination`` gives it the Trainer's budget when the rule has none)."""

    rule: LogLinearTrend

    def __init__(self, rule: LogLinearTrend) -> None:
        super().__init__(rule)
        self.budget_g_steps: Optional[int] = rule.budget_g_steps

    def horizon_steps(self, g_step: int) -> float:
        """G steps the projection looks ahead: ``horizon * g_step``, capped at what is left of the budget."""
        steps = self.rule.horizon * g_step
        if self.budget_g_steps is not None:
            steps = min(steps, float(max(0, self.budget_g_steps - g_step)))
        return steps

    def projected_gain(self, g_step: int) -> float:
        """Relative improvement the current trend projects over the horizon (0 when flat or rising)."""
        rows = self._window(g_step, self.rule.window)
        floor = _noise_floor([r[1] for r in self.history if r[1] is not None])
        slope = theil_sen_slope([r[0] for r in rows], [math.log(max(r[1], floor)) for r in rows])
        return max(0.0, 1.0 - math.exp(slope * self.horizon_steps(g_step)))

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        if not self._record(g_step, metrics):
            return False, ""
        gain = self.projected_gain(g_step)
        horizon_steps = self.horizon_steps(g_step)
        blocked = self._recall_rising(self._window(g_step, rule.window), horizon_steps)
        why = (f"{self._fit_description()} projects a gain of {gain:.1%} < {rule.tolerance:.1%} over the next "
               f"{horizon_steps:.0f} G steps")
        # At the end of the budget there is nothing left to save: the run completes, it is not a plateau.
        return self._verdict(g_step, gain < rule.tolerance and horizon_steps > 0, why, blocked, rule.patience)

    def _fit_description(self) -> str:
        return f"the trend of log {self.rule.monitor} over the last {self.rule.window:.0%} of the run"


LogLinearTrend.state_class = LogLinearTrendState


class NoisePlateau(_EvaluationRule):
    """Stop when the metric has not improved by more than its measurement noise for a share of the run.

    Rule: an evaluation improves on the reference (the value of the last improvement) when
    ``value < ref * (1 - tolerance * min_delta_share) - z * sqrt(std^2 + std_ref^2)``, with ``std`` the
    logged measurement noise of the metric (``noise_key``, e.g. a bootstrap standard deviation; 0 when not
    logged). When no evaluation improved during the last ``patience`` share of the run (G steps since the
    last improvement >= ``patience * t``) and for at least ``min_evaluations`` evaluations, training stops,
    unless recall is still rising (see :class:`LogLinearTrend`).

    Args:
        tolerance: Relative improvement scale (0.05 = 5 %); ``min_delta_share`` of it must be beaten.
        z: Noise multiple an improvement must exceed.
        patience: Share of the run without improvement before stopping (0.3 = the last 30 % of G steps).
        min_delta_share: Share of ``tolerance`` an improvement must beat besides the noise.
        min_evaluations: Fewest evaluations without improvement before stopping.
        recall_tolerance, warmup_g_steps, monitor, noise_key, recall_key, min_progress, mode, step_key: As in
            :class:`LogLinearTrend`.
    """

    checkpoint_name = "FIDNoisePlateau"  # its name before the rename: older checkpoints resume

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
        noise_key: Optional[str] = None,
        recall_key: str = "val/recall",
        min_progress: float = 0.5,
        mode: str = "min",
        step_key: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self._init_common(tolerance, warmup_g_steps, min_evaluations, recall_tolerance, monitor, noise_key, recall_key,
                          min_progress, mode, step_key)
        self.z = check_number(name, "z", z, 0.0)
        self.patience = _below_one(name, "patience", patience, "is a share of the run", strict=True)
        self.min_delta_share = check_number(name, "min_delta_share", min_delta_share, 0.0)


class NoisePlateauState(_EvaluationState):
    """Per-run state of :class:`NoisePlateau`: the history and the reference (the last improvement)."""

    rule: NoisePlateau
    fields = (*_EvaluationState.fields, "reference")

    def __init__(self, rule: NoisePlateau) -> None:
        super().__init__(rule)
        self.reference: Optional[list[Optional[float]]] = None

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        judge = self._record(g_step, metrics)
        if not self.history or self.history[-1][0] != g_step:
            return False, ""
        row = self.history[-1]
        ref = self.reference
        if ref is None:
            self.reference = row
            return False, ""
        noise = math.sqrt((row[2] or 0.0) ** 2 + (ref[2] or 0.0) ** 2)
        if row[1] < ref[1] * (1.0 - rule.tolerance * rule.min_delta_share) - rule.z * noise:
            self.reference, self.flat_count = row, 0
            return False, f"{rule.monitor} improved beyond its noise to {row[1]:.4g} at G step {g_step}."
        if not judge:
            return False, ""
        since = sum(1 for r in self.history if r[0] > ref[0])
        flat = g_step - ref[0] >= rule.patience * g_step and since >= rule.min_evaluations
        blocked = self._recall_rising(self._window(g_step, rule.patience), rule.patience * g_step)
        why = (f"no improvement beyond {rule.z:g} x the measurement noise since G step {ref[0]} "
               f"({ref[1]:.4g})")
        return self._verdict(g_step, flat, why, blocked, 1)


NoisePlateau.state_class = NoisePlateauState


class PowerLaw(LogLinearTrend):
    """Stop when a power-law learning curve fitted to the metric projects less than ``tolerance`` of gain.

    Rule: fit ``m(t) = c + a * t^-alpha`` (Domhan et al., IJCAI 2015, use this among their curve family) to
    the evaluations of the last ``window`` share of the run; the projected gain over ``h`` more G steps
    (:meth:`LogLinearTrendState.horizon_steps`) is ``(m(t) - m(t + h)) / m(t)``. Below ``tolerance`` for
    ``patience`` evaluations in a row, training stops, unless recall is still rising (see :class:`LogLinearTrend`).

    Args: as :class:`LogLinearTrend`.
    """

    checkpoint_name = "FIDPowerLaw"  # its name before the rename: older checkpoints resume


class PowerLawState(LogLinearTrendState):
    """Per-run state of :class:`PowerLaw`."""

    def projected_gain(self, g_step: int) -> float:
        rows = self._window(g_step, self.rule.window)
        c, a, alpha = fit_power_law([float(max(r[0], 1)) for r in rows], [r[1] for r in rows])
        now = c + a * max(g_step, 1) ** -alpha
        later = c + a * (max(g_step, 1) + self.horizon_steps(g_step)) ** -alpha
        return max(0.0, (now - later) / now) if now > 0 else 0.0

    def _fit_description(self) -> str:
        return f"a power law fitted to {self.rule.monitor}"


PowerLaw.state_class = PowerLawState


# ---------------------------------------------------------------------------------------------- Trend
class Trend(_EvaluationRule):
    """Stop when even an optimistic projection of the metric to the end of the budget cannot beat the best so far.

    Rule: at each evaluation (from ``warmup_g_steps`` on, once the run has taken off and ``fit_evaluations`` values
    are in since), fit the Theil-Sen line of ``log value`` against ``log(t + t1)`` over the last ``window`` share of
    the run (``t1``: the first evaluation's G step, so that a fine-tune evaluated at G step 0 fits too). That is a
    power law, the shape learning curves decelerate with: each doubling of the run gains the same share. Project the
    fitted level at ``t`` to the end of the budget (``T``: a falling line followed to ``T``, a flat or rising one
    held), and make the projection optimistic by ``z`` times the spread of the residuals (1.4826 x their median
    absolute value): a value that noisy could still come. The evaluation is *flat* when that optimistic end value
    would not beat the best value so far by ``tolerance``. The run stops once every evaluation of the last
    ``patience`` share of the run was flat (G steps since the first flat one >= ``patience * t``, at least two
    evaluations and ``min_evaluations`` since the take-off), unless recall is still rising (see
    :class:`LogLinearTrend`). A fine-tune's flat verdict must instead hold for ``finetune_patience`` of its budget.

    Why: compared with :class:`LogLinearTrend` (a log-linear trend over a horizon of 4x the run): on long public
    training curves a log-linear trend projects gains a decelerating curve never delivers, so it kept runs going (8 %
    of the savings an oracle makes, ``docs/studies/real_curves.md``); a flat verdict that must hold for a share of the
    run rather than two evaluations does not end a run inside a pause that later resumes; comparing with the best so
    far (not the current value) lets a run that has peaked and worsens stop. A run from scratch sits near its first
    value before it takes off, so such a run decides only after its metric has fallen by ``min_progress``; a fine-tune
    (``starts_trained``: ``EarlyTermination`` sets it for a module initialized from trained weights) decides from its
    first evaluations, since it may never fall that far. A fine-tune has no age to measure a pause against (the G
    steps of its own run say nothing of how long its network trained), so its patience is a share of its budget: long
    enough for a fine-tune that sits at its starting value for a third of its budget and then falls (two of the
    public curves), short enough to stop the many that never beat their start. Verdicts start after only
    ``fit_evaluations`` values so that a run evaluated a dozen times can hold one for its patience.

    Args:
        tolerance: Gain over the best so far, relative, that going on must be able to reach (0.05 = 5 %).
        window: Share of the run (most recent G steps) whose evaluations the line is fitted on.
        patience: Share of the run the flat verdict must have held (0.4 = the last 40 %) before stopping.
        z: Multiple of the residual spread the projection is made optimistic by (0: the fitted line alone).
        min_evaluations: Fewest evaluations since the take-off before stopping.
        fit_evaluations: Fewest evaluations in a fit, so before a verdict (at least 2; ``min_evaluations`` if lower).
        finetune_patience: For a fine-tune (``starts_trained``), the share of the budget the flat verdict must have
            held instead of ``patience`` (``None``: ``patience``, as a run from scratch; without a budget, likewise).
        horizon: Without a budget, how far ahead to project, as a multiple of the G steps so far.
        recall_tolerance, warmup_g_steps, monitor, noise_key, recall_key, min_progress, budget_g_steps, mode, step_key:
            As in :class:`LogLinearTrend` (``min_progress`` applies to runs from scratch only).
    """

    def __init__(
        self,
        tolerance: float = 0.05,
        window: float = 0.5,
        patience: float = 0.4,
        z: float = 1.5,
        min_evaluations: int = 8,
        fit_evaluations: int = 6,
        finetune_patience: Optional[float] = 0.35,
        horizon: float = 1.0,
        recall_tolerance: Optional[float] = 0.02,
        warmup_g_steps: int = 0,
        monitor: str = "val/fid",
        noise_key: Optional[str] = None,
        recall_key: str = "val/recall",
        min_progress: float = 0.3,
        budget_g_steps: Optional[int] = None,
        mode: str = "min",
        step_key: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self._init_common(tolerance, warmup_g_steps, min_evaluations, recall_tolerance, monitor, noise_key, recall_key,
                          min_progress, mode, step_key)
        self._init_projection(window, horizon, budget_g_steps)
        self.patience = _below_one(name, "patience", patience, "is a share of the run", strict=True)
        self.finetune_patience = (None if finetune_patience is None else
                                  _below_one(name, "finetune_patience", finetune_patience, "is a share of the budget",
                                             strict=True))
        self.z = check_number(name, "z", z, 0.0)
        self.fit_evaluations = check_int(name, "fit_evaluations", fit_evaluations, 2)


class TrendState(_EvaluationState):
    """Per-run state of :class:`Trend`; ``budget_g_steps`` and ``starts_trained`` are set by the caller
    (``EarlyTermination``: the Trainer's budget, and whether the module starts from trained weights)."""

    rule: Trend
    fields = (*_EvaluationState.fields, "flat_since")

    def __init__(self, rule: Trend) -> None:
        super().__init__(rule)
        self.budget_g_steps: Optional[int] = rule.budget_g_steps
        self.starts_trained = False
        self.flat_since: Optional[int] = None
        #: The projection of the last judged evaluation (for plots; derivable, so not checkpointed).
        self.last_projection: Optional[dict[str, float]] = None

    def takeoff_g_step(self) -> Optional[int]:
        return int(self.history[0][0]) if self.starts_trained else super().takeoff_g_step()

    def fit_minimum(self) -> int:
        return min(self.rule.fit_evaluations, self.rule.min_evaluations)

    def patience_g_steps(self, g_step: int) -> float:
        """How long (G steps) the flat verdict must have held at ``g_step``: ``patience`` of the run, or for a
        fine-tune with a budget ``finetune_patience`` of the budget."""
        rule = self.rule
        if self.starts_trained and rule.finetune_patience is not None and self.budget_g_steps is not None:
            return rule.finetune_patience * self.budget_g_steps
        return rule.patience * g_step

    def projection(self, g_step: int) -> dict[str, float]:
        """The fit and its optimistic projection at ``g_step``: ``level`` (fitted value now), ``end`` (projected
        value at the end of the budget), ``optimistic`` (``end`` less ``z`` residual spreads), ``best`` (best value
        so far), ``gain`` (``1 - optimistic / best``), ``end_g_step``; and the line itself, ``log value = intercept +
        slope * log(G step + t1)``, fitted from ``from_g_step`` to ``g_step`` (what a plot of the decision draws)."""
        rule = self.rule
        rows = self._window(g_step, rule.window)
        t1 = next((float(r[0]) for r in self.history if r[0] > 0), 1.0)
        floor = _noise_floor([r[1] for r in self.history])
        xs = [math.log(r[0] + t1) for r in rows]
        ys = [math.log(max(r[1], floor)) for r in rows]
        slope = theil_sen_slope(xs, ys)
        intercept = statistics.median(y - slope * x for x, y in zip(xs, ys))
        spread = 1.4826 * statistics.median(abs(y - intercept - slope * x) for x, y in zip(xs, ys))
        end_step = (float(self.budget_g_steps) if self.budget_g_steps is not None
                    else g_step + rule.horizon * max(g_step, t1))
        now, end = math.log(g_step + t1), math.log(max(end_step, g_step) + t1)
        level = intercept + slope * now
        projected = level + min(slope, 0.0) * (end - now)
        optimistic = projected - rule.z * spread
        best = min(r[1] for r in self.history)
        return {"level": math.exp(level), "end": math.exp(projected), "optimistic": math.exp(optimistic),
                "best": best, "gain": 1.0 - math.exp(optimistic) / max(best, floor), "end_g_step": end_step,
                "g_step": float(g_step), "from_g_step": float(rows[0][0]), "slope": slope, "intercept": intercept,
                "t1": t1}

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        if not self._record(g_step, metrics):
            return False, ""
        p = self.last_projection = self.projection(g_step)
        left = p["end_g_step"] - g_step
        blocked = self._recall_rising(self._window(g_step, rule.window), left)
        if p["gain"] >= rule.tolerance or left <= 0 or blocked:
            self.flat_since, self.flat_count = None, 0
            return False, f"Trend: {blocked} at G step {g_step}; no plateau." if blocked else ""
        self.flat_since = g_step if self.flat_since is None else self.flat_since
        self.flat_count += 1
        if (self.flat_count < 2 or not self.started(rule.min_evaluations)
                or g_step - self.flat_since < self.patience_g_steps(g_step)):
            return False, ""
        return True, (
            f"Plateau (Trend): even an optimistic projection of {rule.monitor} to G step {p['end_g_step']:.0f} "
            f"({p['optimistic']:.4g}) would beat its best so far ({p['best']:.4g}) by only {max(p['gain'], 0.0):.1%} "
            f"< {rule.tolerance:.1%}, at every evaluation since G step {self.flat_since} ({self.flat_count} "
            f"evaluations), at G step {g_step}."
        )


Trend.state_class = TrendState


def _noise_floor(values: Sequence[float]) -> float:
    """The smallest value a log fit takes: an unbiased estimate (val/mmd, val/kid) dips below 0 once the
    distributions match at the monitor's resolution; the deepest dip measures that resolution, and values under it
    enter the fit at the floor (never as log(0)), so a run scattering around 0 reads as flat."""
    return max(min((v for v in values if v > 0), default=1e-12), max((-v for v in values if v < 0), default=0.0))


# ---------------------------------------------------------------------------------------------- Collapse
class Collapse(StopRule):
    """Stop a run that mode-collapses: recall falling while the quality metric worsens, for ``patience`` evaluations.

    Rule: at each evaluation (from ``warmup_g_steps`` on) the smoothed metric and recall are the medians of the
    last ``window`` evaluations. The run is collapsing when the smoothed recall is below
    ``(1 - recall_drop)`` times the best smoothed recall so far AND the smoothed metric is worse than its best so
    far by more than ``fid_rise`` (relative: above ``(1 + fid_rise) x best`` for ``mode="min"``, below
    ``(1 - fid_rise) x best`` for ``mode="max"``). ``patience`` collapsing evaluations in a row stop training with
    the reason ``collapsed``; a ``BestGenerator`` callback then restores the best (pre-collapse) generator.
    Without a logged recall the rule never fires, nor before the best smoothed recall reaches ``min_recall``: a
    relative fall of a recall that never left zero is sampling noise, not a collapse (the study's MLP GANs on
    Fashion-MNIST sit at recall 0.00-0.01, and one was called collapsed on a fall from 0.01 to 0.00).

    Args:
        recall_drop: Relative fall of the smoothed recall from its best (0.5 = halved).
        fid_rise: Relative worsening of the smoothed metric from its best (0 = any: the metric is not improving).
        window: Evaluations in the running medians.
        patience: Consecutive collapsing evaluations before stopping.
        warmup_g_steps: No decision before this G step.
        min_recall: No decision before the best smoothed recall reaches this (absolute, recall is in [0, 1]).
        monitor: The quality metric name. ``recall_key``: recall metric name.
        mode: ``"min"`` when lower is better for ``monitor``, ``"max"`` when higher is.
        step_key: The logged G step of each evaluation (``None``: ``<monitor>_g_step``).
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
        mode: str = "min",
        step_key: Optional[str] = None,
    ) -> None:
        name = type(self).__name__
        self.min_recall = _below_one(name, "min_recall", min_recall, "is a recall (in [0, 1])")
        self.recall_drop = _below_one(name, "recall_drop", recall_drop, "is relative", strict=True)
        self.fid_rise = check_number(name, "fid_rise", fid_rise, 0.0)
        self.window = check_int(name, "window", window, 1)
        self.patience = check_int(name, "patience", patience, 1)
        self.warmup_g_steps = check_int(name, "warmup_g_steps", warmup_g_steps, 0)
        self.monitor = check_keys(name, "monitor", monitor)[0]
        self.recall_key = check_keys(name, "recall_key", recall_key)[0]
        self.mode = check_mode(name, mode)
        self.step_key = None if step_key is None else check_keys(name, "step_key", step_key)[0]

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.monitor, self.recall_key)


class CollapseState(RuleState):
    """Per-run state of :class:`Collapse`: the recent (value, recall) pairs, their best medians and the count."""

    rule: Collapse
    fields = ("recent", "best_fid", "best_recall", "count")

    def __init__(self, rule: Collapse) -> None:
        super().__init__(rule)
        self.recent: list[list[float]] = []
        self.best_fid: Optional[float] = None
        self.best_recall: Optional[float] = None
        self.count = 0

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        rule = self.rule
        fid, recall = metrics.get(rule.monitor), metrics.get(rule.recall_key)
        if not (is_finite(fid) and is_finite(recall)):
            return False, ""
        self.recent = (self.recent + [[float(fid), float(recall)]])[-rule.window:]
        sm_fid = statistics.median(r[0] for r in self.recent)
        sm_recall = statistics.median(r[1] for r in self.recent)
        better = min if rule.mode == "min" else max
        self.best_fid = sm_fid if self.best_fid is None else better(self.best_fid, sm_fid)
        self.best_recall = sm_recall if self.best_recall is None else max(self.best_recall, sm_recall)
        if rule.mode == "min":
            worse = sm_fid > (1 + rule.fid_rise) * self.best_fid
        else:
            worse = sm_fid < (1 - rule.fid_rise) * self.best_fid
        collapsing = (g_step >= rule.warmup_g_steps and self.best_recall >= rule.min_recall
                      and sm_recall < (1 - rule.recall_drop) * self.best_recall and worse)
        self.count = self.count + 1 if collapsing else 0
        if self.count < rule.patience:
            return False, ""
        moved = "rose" if rule.mode == "min" else "fell"
        return True, (
            f"Collapsed: the smoothed {rule.recall_key} fell to {sm_recall:.3g} (best {self.best_recall:.3g}) while "
            f"the smoothed {rule.monitor} {moved} to {sm_fid:.4g} (best {self.best_fid:.4g}), for {self.count} "
            f"evaluations, at G step {g_step}."
        )


Collapse.state_class = CollapseState


#: Old rule names -> the metric-neutral classes that replaced them (the old names remain as deprecated aliases).
RENAMED: dict[str, type[StopRule]] = {"FIDPlateau": Plateau, "FIDNoisePlateau": NoisePlateau,
                                      "FIDTrend": LogLinearTrend, "FIDPowerLaw": PowerLaw}
FIDPlateau = deprecated_alias(Plateau, "FIDPlateau")
FIDNoisePlateau = deprecated_alias(NoisePlateau, "FIDNoisePlateau")
FIDTrend = deprecated_alias(LogLinearTrend, "FIDTrend")
FIDPowerLaw = deprecated_alias(PowerLaw, "FIDPowerLaw")
# The state classes' old names (states are built by the rules, so these need no warning).
FIDPlateauState, FIDNoisePlateauState = PlateauState, NoisePlateauState
FIDTrendState, FIDPowerLawState = LogLinearTrendState, PowerLawState


__all__ = ["RENAMED", "Collapse", "CollapseState", "Divergence", "DivergenceState", "FIDNoisePlateau",
           "FIDNoisePlateauState", "FIDPlateau", "FIDPlateauState", "FIDPowerLaw", "FIDPowerLawState", "FIDTrend",
           "FIDTrendState", "LogLinearTrend", "LogLinearTrendState", "LossPlateau", "LossPlateauState", "NoisePlateau",
           "NoisePlateauState", "Plateau", "PlateauState", "PowerLaw", "PowerLawState", "Trend", "TrendState"]

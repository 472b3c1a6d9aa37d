"""CurvePruner: an Optuna pruner that asks of each trial "can it still beat the best trial so far by the end of its
budget?", from its own learning curve.

Optuna's pruners (median, percentile, successive halving, Hyperband) compare a trial's value now with the other
trials' values at the same step, so a GAN trial that starts slowly and finishes best is cut at its first checks
(docs/studies/sweep_pruner.md). This pruner judges each trial by where its curve is heading instead, with the curve
model of the stop rule :class:`~lightning_regan.stopping.Trend` (:meth:`TrendState.projection
<lightning_regan.stopping.rules.TrendState.projection>`): a Theil-Sen line of log value against log(G step + t1)
over the last ``window`` share of the trial, followed to the end of its budget and made optimistic by ``z``
residual spreads. The trial is pruned only when even that optimistic end value would not beat the *incumbent* (the
best value any other complete, pruned or running trial of the study has reported) by ``tolerance``.

It is a plain ``optuna.pruners.BasePruner``: ``pruner=curve`` in a sweep (``OptunaPruning`` reports each evaluation
and asks ``Trial.should_prune()``; rank zero decides and broadcasts), or ``optuna.create_study(pruner=CurvePruner(
budget_g_steps=...))`` in a user's own study. It keeps no state of its own: every decision is a function of the
study's storage (the trial's reported values and the other trials'), so a killed and resumed sweep, or a second
pruner object over the same storage, decides the same.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import optuna

from lightning_regan.stopping.rules import Trend

#: Trial states whose reported values count towards the incumbent (a failed trial's do not: it cannot be picked).
INCUMBENT_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                    optuna.trial.TrialState.RUNNING)


class CurvePruner(optuna.pruners.BasePruner):
    """Prune a trial when even an optimistic projection of its curve to the end of its budget cannot beat the best
    value another trial has reached by ``tolerance``.

    Steps are G steps (``Trial.report(value, step=g_step)``). The study's direction is honoured: for ``minimize``
    (distances: FID, MMD) the values are fitted as they are; for ``maximize`` the pruner fits ``1 / value`` (the
    same power law with the sign of its slope flipped), so values must be positive there (a value <= 0 is left out).
    A trial is never pruned before ``min_evaluations`` finite values and ``min_budget_share`` of its budget, never
    when its own best already equals or beats the incumbent, and never once it has reached its budget.

    The defaults are the setting ``studies/sweep_curve_study.py`` chose on the ring sweep's selection seeds
    (docs/studies/sweep_pruner.md): judge from half of the budget on, and keep a trial while its optimistic end value
    is within 10 times the incumbent (``tolerance=-9``), since the ring's best trials fall 50- to 300-fold in the
    second half of their budget after a slow start. The ground-truth study of ``val/mmd`` sweeps
    (``studies/sweep_truth_study.py``) found them safe (the best trial kept on every held-out sweep) but costly; see
    the sweeps guide for when Optuna's percentile pruner is the better choice.

    Args:
        budget_g_steps: G steps each trial may run (``max_g_steps``). ``None``: read the trial's user attribute
            ``max_g_steps`` (``trial.set_user_attr("max_g_steps", ...)`` before reporting).
        tolerance: Relative gain over the incumbent the optimistic end value must reach to keep the trial
            (0.05: must be able to beat it by 5 %; 0: just beat it; -0.1: keep trials that can come within 10 % of
            it; -4: within 5 times it). Below 1.
        z: Multiple of the residual spread the projection is made optimistic by (0: the fitted line alone).
        window: Share of the trial (most recent G steps) the line is fitted on, in ``(0, 1]``.
        min_evaluations: Fewest values reported before any cut (and in any fit), >= 2.
        min_budget_share: Share of the budget the trial must have run before any cut, in ``[0, 1)``.
    """

    def __init__(self, budget_g_steps: Optional[int] = None, tolerance: float = -9.0, z: float = 2.0,
                 window: float = 0.5, min_evaluations: int = 3, min_budget_share: float = 0.5) -> None:
        name = type(self).__name__
        if budget_g_steps is not None and (not isinstance(budget_g_steps, int) or isinstance(budget_g_steps, bool)
                                           or budget_g_steps < 1):
            raise ValueError(f"{name}: budget_g_steps must be an integer >= 1 or None, got {budget_g_steps!r}.")
        if not _is_number(tolerance) or tolerance >= 1.0:
            raise ValueError(f"{name}: tolerance must be a number < 1 (a relative gain), got {tolerance!r}.")
        if not _is_number(min_budget_share) or not 0.0 <= min_budget_share < 1.0:
            raise ValueError(f"{name}: min_budget_share must be a number in [0, 1), got {min_budget_share!r}.")
        try:  # Trend checks z >= 0, 0 < window <= 1 and min_evaluations >= 2 (an integer)
            self._rule = Trend(tolerance=0.05, window=window, z=z, min_evaluations=min_evaluations,
                               fit_evaluations=min_evaluations,
                               min_progress=0.0, recall_tolerance=None)
        except ValueError as err:
            raise ValueError(str(err).replace("Trend:", f"{name}:", 1)) from None
        self.budget_g_steps = budget_g_steps
        self.tolerance = float(tolerance)
        self.z = self._rule.z
        self.window = self._rule.window
        self.min_evaluations = self._rule.min_evaluations
        self.min_budget_share = float(min_budget_share)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(budget_g_steps={self.budget_g_steps!r}, tolerance={self.tolerance!r}, "
                f"z={self.z!r}, window={self.window!r}, min_evaluations={self.min_evaluations!r}, "
                f"min_budget_share={self.min_budget_share!r})")

    # ------------------------------------------------------------------ the decision
    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.judge(study, trial)["prune"]

    def judge(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """The decision with its figures: ``prune``, ``why`` (one line), and once a projection was made
        ``optimistic`` / ``incumbent`` (in the study's own units), ``gain`` and ``budget``."""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        points = _curve(trial.intermediate_values, maximize)
        g_step = trial.last_step
        if g_step is None or len(points) < self.min_evaluations:
            return {"prune": False, "why": f"fewer than {self.min_evaluations} evaluations"}
        budget = self._budget(trial)
        if g_step >= budget:
            return {"prune": False, "why": "budget reached", "budget": budget}
        if g_step < self.min_budget_share * budget:
            return {"prune": False, "why": f"before {self.min_budget_share:.0%} of the budget", "budget": budget}
        incumbent = self._incumbent(study, trial.number, maximize)
        if incumbent is None:
            return {"prune": False, "why": "no other trial has reported", "budget": budget}
        own_best = min(v for _, v in points)
        if own_best <= incumbent:
            return {"prune": False, "why": "the trial holds the best value", "budget": budget}
        optimistic = self.projection(points, g_step, budget)["optimistic"]
        # An unbiased distance (val/mmd) dips below 0 once matched at its resolution: the depth of the dip.
        reference = incumbent if incumbent > 0 else max(-incumbent, 1e-12)
        gain = 1.0 - optimistic / reference
        out = {"prune": gain < self.tolerance, "budget": budget, "gain": gain,
               "optimistic": 1.0 / optimistic if maximize else optimistic,
               "incumbent": 1.0 / incumbent if maximize else incumbent}
        out["why"] = (f"optimistic projection to G step {budget}: {out['optimistic']:.4g} against the incumbent "
                      f"{out['incumbent']:.4g} (gain {gain:+.1%}, needs {self.tolerance:+.1%})")
        return out

    def projection(self, points: list[tuple[int, float]], g_step: int, budget: int) -> dict[str, float]:
        """:meth:`TrendState.projection` of ``points`` (``(G step, value)``, lower is better) at ``g_step`` to
        ``budget``; the curve counts from its first evaluation (no take-off wait: a trial is judged on its curve)."""
        state = self._rule.new_state()
        state.history = [[int(s), float(v), None, None] for s, v in points if s <= g_step]
        state.starts_trained = True
        state.budget_g_steps = int(budget)
        return state.projection(int(g_step))

    def _budget(self, trial: optuna.trial.FrozenTrial) -> int:
        budget = self.budget_g_steps if self.budget_g_steps is not None else trial.user_attrs.get("max_g_steps")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError(
                f"{type(self).__name__}: trial {trial.number} has no budget: pass budget_g_steps (pruner=curve sets "
                f"it to max_g_steps) or set the trial's user attribute max_g_steps, got {budget!r}."
            )
        return budget

    @staticmethod
    def _incumbent(study: optuna.study.Study, number: int, maximize: bool) -> Optional[float]:
        """The best value (lower is better after the direction's transform) any other counted trial reported."""
        best: Optional[float] = None
        for other in study.get_trials(deepcopy=False, states=INCUMBENT_STATES):
            if other.number == number:
                continue
            for _, value in _curve(other.intermediate_values, maximize):
                best = value if best is None or value < best else best
        return best


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _curve(values: dict[int, float], maximize: bool) -> list[tuple[int, float]]:
    """``(G step, value)`` in step order, finite values only, as lower-is-better (``1 / value`` when maximizing)."""
    out = []
    for step, value in sorted(values.items()):
        if not math.isfinite(value):
            continue
        if maximize:
            if value <= 0:
                continue
            value = 1.0 / value
        out.append((int(step), float(value)))
    return out


__all__ = ["CurvePruner"]

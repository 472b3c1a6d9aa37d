"""EarlyTermination with the evaluation rules of study v2: the ``collapsed`` reason, the ``tolerance`` knob, and the
evaluation's extra metrics (``val/recall``) read from ``trainer.callback_metrics``."""

from __future__ import annotations

import pytest

from lightning_regan.callbacks.best_generator import BestGenerator
from lightning_regan.callbacks.early_termination import EarlyTermination
from lightning_regan.stopping import Collapse, LogLinearTrend, Plateau, StopReason
from test_early_termination import ScriptedFID, ScriptedGAN, fit


class ScriptedFIDRecall(ScriptedFID):
    """ScriptedFID that also logs ``val/recall`` with each evaluation, as FIDMonitor does."""

    def __init__(self, values, recalls):
        super().__init__(values)
        self.recalls = dict(recalls)

    def on_g_step(self, trainer, pl_module, g):
        if g in self.recalls:
            pl_module.log("val/recall", self.recalls[g], on_step=True, on_epoch=False, batch_size=1)
        super().on_g_step(trainer, pl_module, g)


def collapsing(every: int = 5, until: int = 200):
    """FID falls to its best at G step 40, then climbs while recall drops from 0.6 to 0.1 (modes lost)."""
    fids, recalls = {}, {}
    for g in range(every, until + 1, every):
        fids[g] = 100.0 - 2.0 * g if g <= 40 else 20.0 + 1.5 * (g - 40)
        recalls[g] = min(0.6, 0.015 * g) if g <= 40 else 0.1
    return fids, recalls


def test_a_collapsing_run_stops_as_collapsed_and_gets_the_pre_collapse_generator_back():
    fids, recalls = collapsing()
    et = EarlyTermination([LogLinearTrend(), Collapse()], tolerance=0.05)
    keeper = BestGenerator(verbose=False)
    module = ScriptedGAN()
    fit(module, [ScriptedFIDRecall(fids, recalls), et, keeper], g_steps=200)
    assert et.stop_reason is StopReason.COLLAPSED and et.status == "stopped_early"
    # Collapsing at 55 and 60 (medians of the last 3); the trend rule also calls a plateau at 60: collapsed wins.
    assert et.stopped_g_step == 60
    assert keeper.best_g_step == 40 and module.generator.weight.item() == 40.0
    assert et.states["collapse"].count >= et.rules["collapse"].patience and et.stop_message.startswith("Collapsed")
    assert et.describe()["stop_reason"] == "collapsed" and "collapse" in et.describe()["rules"]


def test_recall_logged_with_the_evaluation_reaches_the_fid_rule():
    # Flat FID from G step 5 on; recall keeps rising: the FID rule must not call a plateau.
    fids = {g: 10.0 + (0.1 if (g // 5) % 2 else 0.0) for g in range(5, 201, 5)}
    fids[5] = 100.0  # the run took off at G step 10
    rising = {g: min(0.95, 0.005 * g) for g in fids}
    et = EarlyTermination([LogLinearTrend()])
    fit(ScriptedGAN(), [ScriptedFIDRecall(fids, rising), et], g_steps=200)
    assert et.stop_reason is None and et.states["log_linear_trend"].history[-1][3] == pytest.approx(0.95)
    flat = {g: 0.5 for g in fids}
    et = EarlyTermination([LogLinearTrend()])
    fit(ScriptedGAN(), [ScriptedFIDRecall(fids, flat), et], g_steps=200)
    assert et.stop_reason is StopReason.PLATEAU


def test_tolerance_is_the_rules_tolerance_and_is_checked():
    assert EarlyTermination([LogLinearTrend()], tolerance=0.02).rules["log_linear_trend"].tolerance == 0.02
    with pytest.raises(ValueError, match="tolerance"):
        EarlyTermination([LogLinearTrend()], tolerance=1.5)
    with pytest.raises(ValueError, match="tolerance"):
        EarlyTermination([Plateau()], tolerance=0.05)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_the_fid_rule_gets_the_trainers_budget_in_g_steps(n_critic):
    et = EarlyTermination([LogLinearTrend()])
    fit(ScriptedGAN(n_critic=n_critic), [ScriptedFID({}), et], g_steps=30)
    assert et.states["log_linear_trend"].budget_g_steps == 30
    assert et.rules["log_linear_trend"].budget_g_steps is None  # the rule is configuration: the run's state got the budget
    # A budget given by the user is kept.
    et = EarlyTermination([LogLinearTrend(budget_g_steps=1000)])
    fit(ScriptedGAN(n_critic=n_critic), [ScriptedFID({}), et], g_steps=30)
    assert et.states["log_linear_trend"].budget_g_steps == 1000

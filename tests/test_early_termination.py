"""EarlyTermination (and BestGenerator) in real tiny Trainers driven by scripted metrics; rank reduction; resume;
configs; a rule of the user's own."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import TinyD, TinyG, point_loader
from lightning_regan import GANModule
from lightning_regan.callbacks.best_generator import BestGenerator
from lightning_regan.callbacks.early_termination import EarlyTermination
from lightning_regan.callbacks.g_step import GStepCallback
from lightning_regan.callbacks.run_summary import RunSummary
from lightning_regan.module import max_steps_for
from lightning_regan.stopping import Collapse, Divergence, LossPlateau, Plateau, RuleState, StopReason, StopRule

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGGER = "lightning_regan.callbacks.early_termination"
Script = Callable[[int], Mapping[str, float]]


def steady(g: int) -> dict[str, float]:
    """Healthy-looking losses that keep moving (no plateau, no divergence)."""
    return {"train/d_loss": 1.3 + 0.3 * math.sin(g / 3), "train/d_adv": 1.2,
            "train/g_loss": 0.8 + 0.3 * math.cos(g / 3)}


class Holder(nn.Module):
    """Stands in for ``AveragedModel``: the EMA copy lives in ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class ScriptedGAN(L.LightningModule):
    """A stand-in GANModule: manual optimization, g_steps/d_steps, eval_generator, scripted logged metrics.

    The generator's single weight equals the G step it was produced at (the EMA copy's: 1000 + G step), so a
    restored generator tells which step it came from.
    """

    def __init__(self, script: Script = steady, n_critic: int = 1, ema: bool = False,
                 fid_in_step: Optional[Mapping[int, float]] = None, fail_at: Optional[int] = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.script, self.n_critic, self.fid_in_step, self.fail_at = script, n_critic, fid_in_step or {}, fail_at
        self.generator = nn.Linear(1, 1, bias=False)
        self.discriminator = nn.Linear(1, 1)
        self.ema_generator = Holder(nn.Linear(1, 1, bias=False)) if ema else None
        self.g_steps = 0
        self.d_steps = 0

    @property
    def eval_generator(self) -> nn.Module:
        return self.ema_generator.module if self.ema_generator is not None else self.generator

    def configure_optimizers(self):
        return [torch.optim.SGD(self.generator.parameters(), lr=0.0),
                torch.optim.SGD(self.discriminator.parameters(), lr=0.0)]

    def training_step(self, batch, batch_idx):
        g_opt, d_opt = self.optimizers()
        d_opt.step()  # no gradients: Lightning still counts the optimizer step, as for a real D update
        self.d_steps += 1
        metrics = dict(self.script(self.g_steps + 1))
        self.g_step_taken = self.d_steps % self.n_critic == 0
        if self.g_step_taken:
            g_opt.step()
            self.g_steps += 1
            if self.fail_at is not None and self.g_steps >= self.fail_at:
                raise RuntimeError(f"scripted failure at G step {self.g_steps}")
            with torch.no_grad():
                self.generator.weight.fill_(float(self.g_steps))
                if self.ema_generator is not None:
                    self.ema_generator.module.weight.fill_(1000.0 + self.g_steps)
            if self.g_steps in self.fid_in_step:
                metrics["val/fid"] = self.fid_in_step[self.g_steps]
        else:
            metrics.pop("train/g_loss", None)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["scripted"] = {"g_steps": self.g_steps, "d_steps": self.d_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.g_steps = checkpoint["scripted"]["g_steps"]
        self.d_steps = checkpoint["scripted"]["d_steps"]


class ScriptedFID(GStepCallback):
    """Stands in for FIDMonitor (contract: logs ``val/fid`` and ``val/fid_g_step``; ``summary_fields``)."""

    def __init__(self, values: Mapping[int, float], eval_time_s: float = 0.25,
                 measured_at: Optional[Mapping[int, int]] = None) -> None:
        self.values = dict(values)
        self.measured_at = dict(measured_at or {})  # G step -> the (older) G step its logged value belongs to
        self.cost = eval_time_s
        self.history: list[tuple[int, float]] = []
        self.eval_time_s = 0.0

    def on_g_step(self, trainer, pl_module, g):
        if g in self.values:
            fid, step = self.values[g], self.measured_at.get(g, g)
            pl_module.log_dict({"val/fid": fid, "val/fid_g_step": float(step)}, on_step=True, on_epoch=False,
                               batch_size=1)
            self.history.append((step, fid))
            self.eval_time_s += self.cost

    def summary_fields(self, trainer, pl_module):
        best = min(((f, g) for g, f in self.history), default=(None, None))
        return {"fid_history": [[g, f] for g, f in self.history], "best_fid": best[0], "best_fid_step": best[1],
                "fid_eval_time_s": self.eval_time_s}


def loader(n: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=1)


def make_trainer(g_steps: int, callbacks: list, n_critic: int = 1, **kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, max_epochs=-1,
        max_steps=max_steps_for(g_steps, n_critic), callbacks=callbacks,
    )
    opts.update(kw)
    return L.Trainer(**opts)


def fit(module: ScriptedGAN, callbacks: list, g_steps: int = 60, **kw) -> L.Trainer:
    trainer = make_trainer(g_steps, callbacks, n_critic=module.n_critic, **kw)
    trainer.fit(module, loader())
    return trainer


def fid_curve(best_at: int, every: int = 5, until: int = 200) -> dict[int, float]:
    """FID falling to its best at ``best_at`` and flat-ish (no 1 % improvement) afterwards."""
    out = {}
    for g in range(every, until + 1, every):
        out[g] = 100.0 - 1.5 * g if g <= best_at else 100.0 - 1.5 * best_at + (0.3 if (g // every) % 2 else 0.1)
    return out


def stop_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and "Signaling Trainer to stop." in r.getMessage()]


def best(**kw) -> BestGenerator:
    """The best-generator callback as the configs build it (restored when a callback stops the run early)."""
    return BestGenerator(**{"verbose": False, **kw})


# ---------------------------------------------------------------------------------------------- stop reasons
def test_loss_plateau_stops_the_trainer(caplog):
    caplog.set_level(logging.INFO, logger="lightning_regan")
    flat = lambda g: {"train/d_loss": 1.3 + (0.05 if g % 2 else -0.05), "train/d_adv": 1.2, "train/g_loss": 0.8}  # noqa: E731
    et = EarlyTermination([LossPlateau(window=5, min_delta=0.05, patience=3, warmup_g_steps=10,
                                       check_every_n_g_steps=5)])
    module = ScriptedGAN(flat)
    trainer = fit(module, [et], g_steps=200)
    # checks at 10 (references), 15, 20, 25 flat -> stop at 25; training really ends there
    assert trainer.should_stop and et.stop_reason is StopReason.LOSS_PLATEAU and et.status == "stopped_early"
    assert et.stopped_g_step == 25 == module.g_steps
    assert et.stop_message.startswith("Loss plateau") and et.stop_message.endswith("Signaling Trainer to stop.")
    assert stop_logs(caplog) == [et.stop_message]  # logged once
    assert et.stop_record.status == "stopped_early" and et.stop_record.reason == "loss_plateau"
    assert et.stop_record.g_step == 25 and et.stop_record.source == "EarlyTermination"


def flat_losses(g: int) -> dict[str, float]:
    return {"train/d_loss": 1.3 + (0.05 if g % 2 else -0.05), "train/d_adv": 1.2, "train/g_loss": 0.8}


def test_loss_plateau_until_the_fid_is_logged_leaves_the_decision_to_the_fid():
    def rules(until_logged="val/fid", **fid):
        return {"loss_plateau": LossPlateau(window=5, min_delta=0.05, patience=3, warmup_g_steps=10,
                                            check_every_n_g_steps=5, until_logged=until_logged),
                "plateau": Plateau(**{"patience": 3, **fid})}

    # An FID is measured (improving all along): the flat losses stop nothing; the run goes to its budget.
    et = EarlyTermination(rules())
    module = ScriptedGAN(flat_losses)
    fit(module, [ScriptedFID(fid_curve(best_at=1000)), et], g_steps=100)
    assert module.g_steps == 100 and et.stop_reason is None and et.states["loss_plateau"].off
    # Then the FID plateaus: the FID rule stops it, not the losses.
    et = EarlyTermination(rules(window=1))
    fit(ScriptedGAN(flat_losses), [ScriptedFID(fid_curve(best_at=60)), et], g_steps=200)
    assert et.stop_reason is StopReason.PLATEAU and et.stopped_g_step == 75
    # No FID measured: the same callback stops on the loss plateau, as without the option.
    et = EarlyTermination(rules())
    module = ScriptedGAN(flat_losses)
    fit(module, [et], g_steps=200)
    assert not et.states["loss_plateau"].off and et.stop_reason is StopReason.LOSS_PLATEAU and et.stopped_g_step == 25
    # Without the option an FID changes nothing: the losses stop the run at 25 although the FID improves.
    et = EarlyTermination(rules(until_logged=None))
    fit(ScriptedGAN(flat_losses), [ScriptedFID(fid_curve(best_at=1000)), et], g_steps=200)
    assert et.stop_reason is StopReason.LOSS_PLATEAU and et.stopped_g_step == 25


def test_plateau_stops_and_best_generator_restores_the_best(caplog):
    caplog.set_level(logging.INFO, logger="lightning_regan")
    fid = ScriptedFID(fid_curve(best_at=30))
    et = EarlyTermination([Plateau(patience=3, window=1, min_delta=0.01)])
    keeper = best()
    module = ScriptedGAN()
    fit(module, [fid, et, keeper], g_steps=200)
    assert et.stop_reason is StopReason.PLATEAU and et.status == "stopped_early"
    assert et.stopped_g_step == 45 == module.g_steps  # 3 evaluations (35, 40, 45) after the best at 30
    assert keeper.best_value == pytest.approx(55.0) and keeper.best_g_step == 30
    assert et.smoothed["plateau"] == [(g, pytest.approx(f)) for g, f in fid.history]  # window 1: smoothed = FID
    assert keeper.restored and keeper.restored_into == "generator"
    assert module.generator.weight.item() == 30.0  # the weights of G step 30, not of the last step (45)
    assert len(stop_logs(caplog)) == 1 and "Plateau" in et.stop_message


def test_divergence_non_finite_stops_at_once_with_status_diverged(caplog):
    caplog.set_level(logging.INFO, logger="lightning_regan")
    nan_at_17 = lambda g: {**steady(g), "train/g_loss": math.nan if g == 17 else 0.8}  # noqa: E731
    et = EarlyTermination([Divergence(warmup_g_steps=100), LossPlateau()])
    module = ScriptedGAN(nan_at_17)
    trainer = fit(module, [et], g_steps=100)
    assert trainer.should_stop and et.status == "diverged" and et.stop_reason is StopReason.DIVERGENCE
    assert et.stopped_g_step == 17 == module.g_steps
    assert "train/g_loss = nan" in et.stop_message
    levels = [r.levelno for r in caplog.records if r.name == LOGGER and "Signaling" in r.getMessage()]
    assert levels == [logging.WARNING]


def test_divergence_collapse_after_patience():
    collapse = lambda g: {**steady(g), "train/d_adv": 1e-6 if g >= 20 else 1.0}  # noqa: E731
    et = EarlyTermination([Divergence(d_loss_floor=1e-4, patience=10)])
    module = ScriptedGAN(collapse, n_critic=2)
    fit(module, [et], g_steps=100)
    assert et.status == "diverged" and et.stopped_g_step == 29 == module.g_steps
    assert module.d_steps == 58  # stopped right after the G step: n_critic D steps per G step


def test_runs_to_max_steps_when_nothing_triggers():
    fid = ScriptedFID(fid_curve(best_at=1000))
    et = EarlyTermination([LossPlateau(window=5, patience=3, warmup_g_steps=0, check_every_n_g_steps=5),
                           Plateau(patience=3), Divergence(d_loss_floor=1e-4, patience=5)])
    keeper = best()
    module = ScriptedGAN()
    trainer = fit(module, [fid, et, keeper], g_steps=50)
    assert not trainer.should_stop and module.g_steps == 50
    assert et.status == "completed" and et.stop_reason is None and et.stopped_g_step is None and et.stop_record is None
    assert keeper.best_g_step == 50 and not keeper.restored and module.generator.weight.item() == 50.0


# ---------------------------------------------------------------------------------------------- the rule list
class EveryOtherLow(StopRule):
    """A user's rule: stop after ``times`` evaluations in a row of ``monitor`` below ``floor``."""

    def __init__(self, floor: float, times: int = 2, monitor: str = "val/fid") -> None:
        self.floor, self.times, self.monitor = floor, times, monitor

    def config(self) -> dict[str, Any]:
        return {"floor": self.floor, "times": self.times, "monitor": self.monitor}


class EveryOtherLowState(RuleState):
    def __init__(self, rule: EveryOtherLow) -> None:
        super().__init__(rule)
        self.count = 0

    def update(self, g_step, metrics):
        value = metrics.get(self.rule.monitor)
        self.count = self.count + 1 if value is not None and value < self.rule.floor else 0
        return self.count >= self.rule.times, f"{self.rule.monitor} below {self.rule.floor} at G step {g_step}."

    def _state(self):
        return {"count": self.count}

    def _load_state(self, state):
        self.count = int(state.get("count", 0))


EveryOtherLow.state_class = EveryOtherLowState


def test_a_rule_of_the_users_own_stops_a_short_fit():
    rule = EveryOtherLow(floor=60.0)
    et = EarlyTermination(rules=[rule, Divergence()])
    module = ScriptedGAN()
    fit(module, [ScriptedFID(fid_curve(best_at=30)), et], g_steps=100)
    # FID 100 - 1.5 g: below 60 from G step 30 (55); twice in a row at 35
    assert et.stop_reason is StopReason.PLATEAU and et.stopped_g_step == 35 == module.g_steps
    assert set(et.rules) == {"every_other_low", "divergence"} and et.states["every_other_low"].count == 2
    assert rule.config() == {"floor": 60.0, "times": 2, "monitor": "val/fid"}  # the rule itself is untouched


class ScriptedAccuracy(GStepCallback):
    """Logs ``val/class_accuracy`` (higher is better) every 5 G steps with ``val/fid_g_step``, as FIDMonitor does."""

    def __init__(self, values: Mapping[int, float]) -> None:
        self.values = dict(values)

    def on_g_step(self, trainer, pl_module, g):
        if g in self.values:
            pl_module.log_dict({"val/class_accuracy": self.values[g], "val/fid_g_step": float(g)}, on_step=True,
                               on_epoch=False, batch_size=1)


def test_a_max_mode_rule_on_a_scripted_metric_with_the_best_generator():
    # Accuracy rises to 0.9 at G step 30, then stays at 0.88 (a repeated value: the step key tells evaluations apart).
    acc = {g: min(0.9, 0.3 * g / 10) if g <= 30 else 0.88 for g in range(5, 201, 5)}

    def rule(mode="max", step_key="val/fid_g_step"):
        return Plateau(monitor="val/class_accuracy", mode=mode, patience=3, window=1, step_key=step_key)

    et = EarlyTermination([rule()])
    keeper = best(monitor="val/class_accuracy", mode="max", step_key="val/fid_g_step")
    module = ScriptedGAN()
    fit(module, [ScriptedAccuracy(acc), et, keeper], g_steps=200)
    assert et.stop_reason is StopReason.PLATEAU and et.stopped_g_step == 45 == module.g_steps
    assert keeper.best_value == pytest.approx(0.9) and keeper.best_g_step == 30
    assert keeper.restored and module.generator.weight.item() == 30.0
    # The same metric read as lower-is-better stops early in the rise (a rise is no improvement): the mode decides.
    et = EarlyTermination([rule(mode="min")])
    fit(ScriptedGAN(), [ScriptedAccuracy(acc), et], g_steps=200)
    assert et.stopped_g_step == 20
    # Without the step key (val/class_accuracy_g_step is not logged) a repeated value is no new evaluation.
    et = EarlyTermination([rule(step_key=None)])
    fit(ScriptedGAN(), [ScriptedAccuracy(acc), et], g_steps=200)
    assert et.stop_reason is None
    with pytest.raises(ValueError, match="step_key"):
        EarlyTermination([rule(), Collapse(monitor="val/class_accuracy", mode="max")])


def test_rules_by_name_tolerance_shared_and_never_mutated():
    from lightning_regan.stopping import LogLinearTrend

    trend = LogLinearTrend()
    et = EarlyTermination({"metric_plateau": trend, "off": None, "divergence": Divergence()}, tolerance=0.02)
    assert list(et.rules) == ["metric_plateau", "divergence"]
    assert et.rules["metric_plateau"].tolerance == 0.02 and trend.tolerance == 0.05  # a new rule; the user's kept
    two = EarlyTermination([Plateau(), Plateau(monitor="val/kid")])
    assert list(two.rules) == ["plateau", "plateau_2"] and two.state_key != et.state_key


# ---------------------------------------------------------------------------------------------- non-stops
def test_noisy_but_improving_fid_does_not_stop():
    # -4 % per evaluation on average, +-6 % alternating noise, +4 % bump every 5th evaluation
    values = {5 * (i + 1): 100 * 0.96**i * (1 + 0.06 * (-1) ** i + 0.04 * (i % 5 == 0)) for i in range(40)}
    et = EarlyTermination([Plateau(patience=3, window=3)])
    keeper = best()
    module = ScriptedGAN()
    fit(module, [ScriptedFID(values), et, keeper], g_steps=200)
    assert module.g_steps == 200 and et.stop_reason is None
    assert keeper.best_value == pytest.approx(min(values.values()))
    series = list(values.values())
    assert sum(b > a for a, b in zip(series, series[1:])) >= 15  # it really is noisy


def test_spike_then_recovery_does_not_stop_before_patience():
    series = [120.0, 80.0, 60.0, 48.7, 84.0, 56.2, 52.0, 49.5, 46.0, 44.0, 43.0, 41.0]
    values = {5 * (i + 1): v for i, v in enumerate(series)}
    et = EarlyTermination([Plateau(patience=5, window=1)])
    keeper = best()
    module = ScriptedGAN()
    fit(module, [ScriptedFID(values), et, keeper], g_steps=60)
    assert et.stop_reason is None and module.g_steps == 60
    assert keeper.best_value == 41.0 and keeper.best_g_step == 60
    # the same curve with patience 3 stops during the recovery (the Trainer test can tell the difference)
    et3 = EarlyTermination([Plateau(patience=3, window=1)])
    module3 = ScriptedGAN()
    fit(module3, [ScriptedFID(values), et3, best()], g_steps=60)
    assert et3.stop_reason is StopReason.PLATEAU and et3.stopped_g_step == 35
    assert module3.generator.weight.item() == 20.0  # best 48.7 at G step 20 restored


# ---------------------------------------------------------------------------------------------- FID sources
def test_fid_monitor_registered_after_the_decision_and_the_best_generator():
    # Reversed order: the evaluation is seen at the next batch start (generator unchanged), the stop one
    # batch later; the best generator copy is still exactly the evaluated one.
    fid = ScriptedFID(fid_curve(best_at=30))
    et = EarlyTermination([Plateau(patience=3, window=1)])
    keeper = best()
    module = ScriptedGAN()
    fit(module, [et, keeper, fid], g_steps=200)
    assert et.stop_reason is StopReason.PLATEAU and et.stopped_g_step == 46 == module.g_steps
    assert keeper.best_g_step == 30 and keeper.best_generator_step == 30
    assert module.generator.weight.item() == 30.0


def test_final_evaluation_logged_after_us_is_still_counted():
    fid = ScriptedFID({10: 50.0, 20: 40.0, 30: 30.0})
    keeper = best(restore="always")
    module = ScriptedGAN()
    module.generator.weight.data.fill_(-1.0)
    fit(module, [keeper, fid], g_steps=30)
    assert keeper.best_value == 30.0 and keeper.best_g_step == 30 and keeper.restored
    assert module.generator.weight.item() == 30.0


def test_no_best_generator_copy_for_an_evaluation_of_an_earlier_step():
    # History entries older than the current G step (e.g. restored by the monitor, not by us) describe a
    # generator that no longer exists: their value counts, but the current weights must not be kept as "best".
    fid = ScriptedFID({10: 50.0, 20: 40.0, 22: 1.0}, measured_at={22: 3})
    keeper = best(restore="always")
    module = ScriptedGAN()
    fit(module, [fid, keeper], g_steps=25)
    assert keeper.best_value == 1.0 and keeper.best_g_step == 3 and keeper.best_generator_step is None
    assert not keeper.restored and module.generator.weight.item() == 25.0


def test_val_fid_logged_by_the_module_without_fid_monitor():
    values = fid_curve(best_at=20, until=100)
    et = EarlyTermination([Plateau(patience=2, window=1)])
    keeper = best()
    module = ScriptedGAN(fid_in_step=values)
    fit(module, [et, keeper], g_steps=100)
    assert et.stop_reason is StopReason.PLATEAU and et.stopped_g_step == 30
    # no val/fid_g_step logged: a changed value is a new evaluation, each one counted once
    assert et.smoothed["plateau"] == [(g, pytest.approx(values[g])) for g in (5, 10, 15, 20, 25, 30)]
    assert keeper.best_g_step == 20 and module.generator.weight.item() == 20.0


def test_ema_generator_gets_the_best_weights_and_generator_is_untouched():
    et = EarlyTermination([Plateau(patience=2, window=1)])
    keeper = best()
    module = ScriptedGAN(ema=True)
    fit(module, [ScriptedFID(fid_curve(best_at=20)), et, keeper], g_steps=100)
    assert et.stopped_g_step == 30 and keeper.restored_into == "ema_generator"
    assert module.ema_generator.module.weight.item() == 1020.0
    assert module.generator.weight.item() == 30.0


@pytest.mark.parametrize("restore", ["never", "on_stop"])
def test_best_generator_restore_never_and_not_at_the_budget(restore):
    # "never" keeps the last weights after a stop; "on_stop" keeps them when the run reaches its budget.
    patience, g_steps = (2, 100) if restore == "never" else (50, 40)
    keeper = best(restore=restore)
    module = ScriptedGAN()
    et = EarlyTermination([Plateau(patience=patience, window=1)])
    fit(module, [ScriptedFID(fid_curve(best_at=20)), et, keeper], g_steps=g_steps)
    assert et.stopped_g_step == (30 if restore == "never" else None)
    assert keeper.best_g_step == 20 and not keeper.restored
    assert module.generator.weight.item() == (30.0 if restore == "never" else 40.0)
    with pytest.raises(ValueError, match="restore"):
        BestGenerator(restore="sometimes")


def test_best_generator_resumes_with_its_copy(tmp_path):
    values = fid_curve(best_at=30)
    keeper = best()
    trainer = fit(ScriptedGAN(), [ScriptedFID(values), EarlyTermination([Plateau(patience=3, window=1)]),
                                  keeper], g_steps=38)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed_keeper = best()
    resumed = ScriptedGAN()
    trainer = make_trainer(200, [ScriptedFID(values), EarlyTermination([Plateau(patience=3, window=1)]),
                                 resumed_keeper])
    trainer.fit(resumed, loader(), ckpt_path=str(ckpt), weights_only=True)
    assert resumed.g_steps == 45 and resumed_keeper.best_g_step == 30 and resumed_keeper.restored
    assert resumed.generator.weight.item() == 30.0  # the copy taken before the resume, from the checkpoint


def test_fast_dev_run_is_skipped():
    nan = lambda g: {**steady(g), "train/d_loss": math.nan}  # noqa: E731
    et = EarlyTermination([Divergence()])
    module = ScriptedGAN(nan)
    trainer = make_trainer(10, [et], fast_dev_run=3)
    trainer.fit(module, loader())
    assert et.stop_reason is None and et.status == "completed" and 1 <= module.g_steps <= 3


# ---------------------------------------------------------------------------------------------- ranks
class RankSpy:
    """Replaces the strategy's reductions: records calls and plays 'another rank' deciding to stop."""

    def __init__(self, other_stops_at: Optional[int], other_reason: Optional[StopReason], module: ScriptedGAN) -> None:
        self.other_stops_at, self.other_reason, self.module = other_stops_at, other_reason, module
        self.decisions: list[tuple[int, bool, bool]] = []
        self.reduce_ops: list[str] = []

    def other_wants_stop(self) -> bool:
        return self.other_stops_at is not None and self.module.g_steps >= self.other_stops_at

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        self.decisions.append((self.module.g_steps, bool(decision), all))
        return bool(decision) if all else bool(decision) or self.other_wants_stop()

    def reduce(self, tensor, group=None, reduce_op="mean"):
        from lightning_regan.stopping import REASON_CODES

        self.reduce_ops.append(reduce_op)
        other = REASON_CODES[self.other_reason] if self.other_wants_stop() else 0
        return torch.maximum(tensor, torch.tensor(other)) if reduce_op == "max" else tensor


def spy_on(trainer: L.Trainer, spy: RankSpy, monkeypatch) -> None:
    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", spy.reduce_boolean_decision)
    monkeypatch.setattr(trainer.strategy, "reduce", spy.reduce)


def test_another_rank_stopping_stops_this_rank_with_its_reason(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lightning_regan")
    module = ScriptedGAN()
    et = EarlyTermination([LossPlateau(), Plateau(), Divergence(d_loss_floor=1e-4)])
    trainer = make_trainer(100, [et])
    spy = RankSpy(other_stops_at=7, other_reason=StopReason.DIVERGENCE, module=module)
    spy_on(trainer, spy, monkeypatch)
    trainer.fit(module, loader())
    assert module.g_steps == 7 and trainer.should_stop
    assert et.stop_reason is StopReason.DIVERGENCE and et.status == "diverged" and et.stopped_g_step == 7
    assert "Another process detected divergence" in et.stop_message
    # every G step was reduced as an "any" decision; this rank itself never wanted to stop
    assert [g for g, _, _ in spy.decisions] == list(range(1, 8))
    assert all(all_ is False and local is False for _, local, all_ in spy.decisions)
    assert spy.reduce_ops.count("max") == 1  # the reason, reduced once after the decision
    assert len(stop_logs(caplog)) == 1


def test_reason_precedence_across_ranks(monkeypatch):
    # This rank sees a loss plateau while another rank diverges at the same step: both record divergence.
    flat = lambda g: {"train/d_loss": 1.3, "train/d_adv": 1.2, "train/g_loss": 0.8}  # noqa: E731
    module = ScriptedGAN(flat)
    et = EarlyTermination([LossPlateau(window=2, patience=1, warmup_g_steps=0, check_every_n_g_steps=5)])
    trainer = make_trainer(100, [et])
    spy = RankSpy(other_stops_at=7, other_reason=StopReason.DIVERGENCE, module=module)
    spy_on(trainer, spy, monkeypatch)
    trainer.fit(module, loader())
    assert et.stop_reason is StopReason.DIVERGENCE and et.stopped_g_step == 7
    # ... and the local decision went into the reduction
    assert spy.decisions[-1] == (7, True, False)


def test_local_decision_goes_through_the_reduction(monkeypatch):
    # If the reduction says "nobody stops", this rank does not stop on its own: the decision is collective.
    nan = lambda g: {**steady(g), "train/d_loss": math.nan if g >= 5 else 1.3}  # noqa: E731
    module = ScriptedGAN(nan)
    et = EarlyTermination([Divergence()])
    trainer = make_trainer(12, [et])
    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", lambda decision, all=True: False)
    trainer.fit(module, loader())
    assert module.g_steps == 12 and et.stop_reason is None


# ---------------------------------------------------------------------------------------------- checkpoints
def plateau_rules(patience: int = 3) -> dict[str, Any]:
    return dict(plateau=Plateau(patience=patience, window=1),
                loss_plateau=LossPlateau(window=5, patience=patience, warmup_g_steps=0, check_every_n_g_steps=5))


def test_resume_mid_plateau_takes_the_same_decision_at_the_same_step(tmp_path):
    values = fid_curve(best_at=30)
    ref_et = EarlyTermination(plateau_rules())
    ref = ScriptedGAN()
    fit(ref, [ScriptedFID(values), ref_et], g_steps=200)
    assert ref_et.stopped_g_step == 45

    first_et = EarlyTermination(plateau_rules())
    first = ScriptedGAN()
    trainer = fit(first, [ScriptedFID(values), first_et], g_steps=38)  # best at 30, one flat evaluation (35)
    assert first_et.states["plateau"].wait_count == 1 and first_et.stop_reason is None
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed_et = EarlyTermination(plateau_rules())
    resumed = ScriptedGAN()
    trainer = make_trainer(200, [ScriptedFID(values), resumed_et])
    trainer.fit(resumed, loader(), ckpt_path=str(ckpt), weights_only=True)
    assert resumed_et.stop_reason is StopReason.PLATEAU and resumed_et.stopped_g_step == 45 == resumed.g_steps
    assert resumed_et.smoothed == ref_et.smoothed
    # The decision's checkpoint state is plain data: counters, no tensors.
    state = torch.load(ckpt, weights_only=True)["callbacks"][first_et.state_key]
    assert json.loads(json.dumps(state)) == state


def test_resume_keeps_the_new_config(tmp_path):
    values = fid_curve(best_at=30)
    first_et = EarlyTermination(plateau_rules(patience=3))
    trainer = fit(ScriptedGAN(), [ScriptedFID(values), first_et], g_steps=38)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    more_patient = EarlyTermination(plateau_rules(patience=5))
    module = ScriptedGAN()
    with pytest.warns(UserWarning, match="patience: 3 -> 5"):
        make_trainer(200, [ScriptedFID(values), more_patient]).fit(module, loader(), ckpt_path=str(ckpt))
    assert more_patient.rules["plateau"].patience == 5
    assert more_patient.stopped_g_step == 55  # 5 evaluations after the best, counting the restored one at 35


def test_state_dict_round_trip_and_state_key(caplog):
    et = EarlyTermination(plateau_rules())
    et.smoothed = {"plateau": [(20, 15.0), (40, 12.5)]}
    et.states["plateau"].wait_count = 2
    other = EarlyTermination(plateau_rules())
    other.load_state_dict(et.state_dict())
    assert other.smoothed == {"plateau": [(20, 15.0), (40, 12.5)]}
    assert other.states["plateau"].wait_count == 2 and other.status == "completed"
    assert "val/fid" in et.state_key
    assert EarlyTermination([Plateau(monitor="val/kid")]).state_key != EarlyTermination([Plateau()]).state_key
    # a rule absent from the checkpoint starts fresh, and the log says so
    fresh = EarlyTermination([Divergence()])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        fresh.load_state_dict({"rules": {"plateau": {"wait_count": 3}}})
    assert fresh.states["divergence"].violation_count == 0
    assert "no state of the rule(s) divergence" in caplog.text


def test_checkpoints_written_with_the_old_rule_names_resume_into_the_new_ones(tmp_path, caplog):
    from lightning_regan.stopping import FIDPlateau, FIDTrend, LogLinearTrend

    # The key under which a checkpoint written before the rename holds the state (a list's rule was then named after
    # its class, FIDPlateau -> fid_plateau): the renamed rule computes the same.
    assert EarlyTermination([Plateau()]).state_key == (
        "EarlyTermination{'rules': (('fid_plateau', 'FIDPlateau', 'val/fid', 'min'),)}")
    with pytest.warns(DeprecationWarning):
        old = EarlyTermination([FIDPlateau(window=1), FIDTrend(monitor="val/mmd")])
        old_named = EarlyTermination({"metric_plateau": FIDTrend(), "divergence": Divergence()})
    new = EarlyTermination([Plateau(window=1), LogLinearTrend(monitor="val/mmd")])
    assert list(old.rules) == list(new.rules) == ["plateau", "log_linear_trend"] and old.state_key == new.state_key
    assert old_named.state_key == EarlyTermination({"metric_plateau": LogLinearTrend(),
                                                    "divergence": Divergence()}).state_key
    assert old.describe()["rules"]["plateau"]["class"] == "Plateau"
    # A state as the old version saved it (rules and smoothed values under fid_plateau, fid_trend) restores.
    new.states["plateau"].wait_count, new.smoothed = 2, {"plateau": [(20, 15.0)]}
    new.states["log_linear_trend"].history = [[10, 3.0, None, None]]
    state = new.state_dict()
    legacy = {**state, "rules": {"fid_plateau": state["rules"]["plateau"],
                                 "fid_trend": state["rules"]["log_linear_trend"]},
              "smoothed": {"fid_plateau": state["smoothed"]["plateau"]}}
    for saved in (legacy, state):
        restored = EarlyTermination([Plateau(window=1), LogLinearTrend(monitor="val/mmd")])
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            restored.load_state_dict(json.loads(json.dumps(saved)))
        assert restored.states["plateau"].wait_count == 2 and restored.smoothed == {"plateau": [(20, 15.0)]}
        assert restored.states["log_linear_trend"].history == [[10, 3.0, None, None]]
    assert "no state of the rule" not in caplog.text
    # End to end: a run checkpointed with the old name resumes with the new one and stops where an unbroken run does.
    values = fid_curve(best_at=30)
    with pytest.warns(DeprecationWarning):
        first = EarlyTermination([FIDPlateau(patience=3, window=1)])
    trainer = fit(ScriptedGAN(), [ScriptedFID(values), first], g_steps=38)
    assert first.states["plateau"].wait_count == 1
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    resumed_et, resumed = EarlyTermination([Plateau(patience=3, window=1)]), ScriptedGAN()
    make_trainer(200, [ScriptedFID(values), resumed_et]).fit(resumed, loader(), ckpt_path=str(tmp_path / "old.ckpt"),
                                                              weights_only=True)
    assert resumed_et.stop_reason is StopReason.PLATEAU and resumed_et.stopped_g_step == 45 == resumed.g_steps


# ---------------------------------------------------------------------------------------------- arguments, configs
def test_bad_arguments():
    with pytest.raises(ValueError, match="must be a lightning_regan.stopping.StopRule"):
        EarlyTermination([Plateau(), "val/fid"])
    with pytest.raises(ValueError, match="rules must be a list or a mapping"):
        EarlyTermination(Plateau())
    with pytest.raises(ValueError, match="tolerance"):
        EarlyTermination([Plateau()], tolerance=0.05)
    with pytest.raises(ValueError, match="tolerance"):
        EarlyTermination([Divergence()], tolerance=1.5)
    with pytest.raises(ValueError, match="verbose"):
        EarlyTermination([Divergence()], verbose="yes")


def compose_early_stopping(name: str):
    from lightning_regan.config import compose_config

    return compose_config([f"early_stopping={name}", "output_dir=/tmp/unused"]).early_stopping


@pytest.mark.parametrize(
    ("name", "rules"),
    [("plateau", {"loss_plateau", "divergence"}), ("fid", {"metric_plateau", "divergence"}),
     ("default", {"loss_plateau", "metric_plateau", "divergence", "collapse"}),
     ("trend", {"metric_plateau", "divergence", "collapse"})],
)
def test_configs_build_the_documented_rules(name, rules):
    from hydra.utils import instantiate

    node = compose_early_stopping(name)
    assert node._target_ == "lightning_regan.callbacks.EarlyTermination"
    node._target_ = "lightning_regan.callbacks.early_termination.EarlyTermination"  # export checked below
    et = instantiate(node)
    assert isinstance(et, EarlyTermination) and set(et.rules) == rules
    if "divergence" in rules:
        assert et.rules["divergence"].check_finite and et.rules["divergence"].d_loss_floor is not None
    if "metric_plateau" in rules:
        assert et.rules["metric_plateau"].monitor == "val/mmd"  # ${stop_metric}
        if isinstance(et.rules["metric_plateau"], Plateau):
            assert et.rules["metric_plateau"].window >= 3
    if "loss_plateau" in rules and name == "default":
        assert et.rules["loss_plateau"].until_logged == "val/mmd"


def test_configs_read_the_stop_metric():
    from hydra.utils import instantiate

    from lightning_regan.config import compose_config

    cfg = compose_config(["stop_metric=val/mmd", "output_dir=/tmp/unused"])
    et = instantiate(cfg.early_stopping)
    assert {r.monitor for n, r in et.rules.items() if n in ("metric_plateau", "collapse")} == {"val/mmd"}
    assert instantiate(cfg.callbacks.best_generator).monitor == "val/mmd"


def test_callbacks_package_exports_the_config_targets():
    import lightning_regan.callbacks as callbacks_pkg

    from lightning_regan.callbacks.run_summary import RunSummary

    assert getattr(callbacks_pkg, "EarlyTermination", None) is EarlyTermination
    assert getattr(callbacks_pkg, "BestGenerator", None) is BestGenerator
    assert getattr(callbacks_pkg, "RunSummary", None) is RunSummary


def test_none_config_disables_stopping():
    node = compose_early_stopping("none")
    assert "_target_" not in node and len(node) == 0


# ---------------------------------------------------------------------------------------------- real GANModule, DDP
def test_with_the_real_gan_module_divergence_and_no_missing_metrics(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning_regan")
    torch.manual_seed(0)
    sgd = functools.partial(torch.optim.SGD, lr=1e6)  # explodes within a few steps
    module = GANModule(TinyG(), TinyD(), loss="wasserstein", g_optimizer=sgd, d_optimizer=sgd)
    et = EarlyTermination([LossPlateau(), Plateau(), Divergence(d_loss_floor=1e-4, d_loss_ceiling=1e3, patience=3)])
    trainer = make_trainer(200, [et, RunSummary(tmp_path)])
    trainer.fit(module, point_loader())
    assert et.status == "diverged" and module.g_steps == et.stopped_g_step < 20
    assert not [r for r in caplog.records if "not logged" in r.getMessage()]  # GANModule logs every key the rules read
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["g_steps"] == module.g_steps


def nan_on_rank_one(g: int) -> dict[str, float]:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return {**steady(g), "train/d_loss": math.nan if rank == 1 and g >= 5 else 1.3}


class DestroyProcessGroup(L.Callback):
    """Tear gloo down in each spawned rank once its fit is over: left to interpreter shutdown, gloo's threads can
    abort the process (SIGABRT) after the test's work is done (as in tests/test_ddp.py's scenario runner)."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.timeout(180)  # a missed collective would hang, not fail
def test_ddp_one_rank_diverges_all_ranks_stop(tmp_path):
    """Two CPU processes (gloo, ~6 s): only rank 1 sees NaN; both stop at the same G step (no hang), and
    rank 0, which saw nothing wrong, records why."""
    module = ScriptedGAN(nan_on_rank_one)
    et = EarlyTermination([Divergence(), LossPlateau()])
    trainer = make_trainer(100, [et, RunSummary(tmp_path), DestroyProcessGroup()], devices=2, strategy="ddp_spawn")
    trainer.fit(module, loader())
    summary = json.loads((tmp_path / "summary.json").read_text())  # written by rank 0
    assert summary["world_size"] == 2 and summary["status"] == "diverged" and summary["stop_reason"] == "divergence"
    assert summary["g_steps"] == 5 == summary["stopped_g_step"]
    assert "Another process detected divergence" in summary["early_termination"]["stop_message"]


def test_replay_decides_on_logged_evaluations_from_fresh_states_as_a_fit_would():
    """``EarlyTermination.replay``: fresh states prepared for the budget and the start, the first stop returned."""
    from lightning_regan.stopping import Trend

    stopping = EarlyTermination(rules=[Trend(monitor="val/mmd")])
    flat = [(100 * (i + 1), {"val/mmd": 0.2 * (1 + 0.01 * (-1) ** i)}) for i in range(30)]
    # A fine-tune flat from its start stops before the budget (flat for 35 % of it); a run from scratch waits for a
    # take-off it never has.
    hit = stopping.replay(flat, 3000, initialized_from="trained.ckpt")
    assert hit is not None and hit[0] < 3000 and hit[1] == "trend" and hit[2] is StopReason.PLATEAU
    assert "Plateau (Trend)" in hit[3]
    assert stopping.replay(flat, 3000) is None
    # The states are fresh each time: the same replay after another gives the same answer.
    assert stopping.replay(flat, 3000, initialized_from="trained.ckpt") == hit
    assert stopping.states["trend"].budget_g_steps == 3000

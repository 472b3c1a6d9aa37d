"""RunSummary (summary.json + plots) and the plot helpers, in real tiny Trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from lightning_regan.callbacks.best_generator import BestGenerator
from lightning_regan.callbacks.early_termination import EarlyTermination
from lightning_regan.callbacks.run_summary import RunSummary, write_json_atomic
from lightning_regan.plots import plot_fid, plot_losses
from lightning_regan.stopping import Divergence, Plateau, StopRecord, first_stop

from lightning_regan.callbacks.g_step import GStepCallback
from test_early_termination import ScriptedFID, ScriptedGAN, fid_curve, fit, loader, make_trainer, steady

SCHEMA = {"status", "stop_reason", "g_steps", "d_steps", "wall_time_s", "fid_eval_time_s", "best_fid",
          "best_fid_step", "fid_history", "checkpoint_best", "world_size"}


def _reject_constant(name: str):
    raise ValueError(f"summary.json holds {name}, which is not valid JSON")


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(), parse_constant=_reject_constant)


def assert_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_summary_after_plateau_stop(tmp_path):
    fid = ScriptedFID(fid_curve(best_at=30), eval_time_s=0.25)
    et = EarlyTermination([Plateau(patience=3, window=1)])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/fid", mode="min", filename="best",
                           every_n_train_steps=10, save_top_k=1, save_last=True)  # 10 global steps = 5 G steps
    summary_cb = RunSummary(tmp_path, loss_log_every_n_g_steps=10)
    module = ScriptedGAN(n_critic=1)
    fit(module, [fid, et, BestGenerator(verbose=False), summary_cb, ckpt], g_steps=200, enable_checkpointing=True)

    s = read_summary(tmp_path)
    assert SCHEMA <= set(s)
    assert s["status"] == "stopped_early" and s["stop_reason"] == "plateau"
    assert s["g_steps"] == 45 == s["stopped_g_step"] and s["d_steps"] == 45 and s["global_step"] == 90
    assert s["best_fid"] == pytest.approx(55.0) and s["best_fid_step"] == 30
    assert s["fid_history"] == [[g, pytest.approx(f)] for g, f in fid.history] and len(s["fid_history"]) == 9
    assert s["fid_eval_time_s"] == pytest.approx(9 * 0.25)
    assert 0 < s["wall_time_s"] < 120 and s["world_size"] == 1
    assert Path(s["checkpoint_best"]).name == "best.ckpt" and Path(s["checkpoint_best"]).is_file()
    assert Path(s["checkpoint_last"]).is_file()
    info = s["early_termination"]
    assert info["stop_message"].endswith("Signaling Trainer to stop.") and "plateau" in info["rules"]
    assert s["best_generator"]["restored"] and s["best_generator"]["restored_into"] == "generator"
    assert s["best_generator"]["restored_g_step"] == 30 == s["best_generator"]["best_g_step"]
    assert s["final_metrics"]["val/fid"] == pytest.approx(fid.history[-1][1])
    # the stop metric leads: BestGenerator's monitor (val/fid here), its best and history as the rules read them
    assert list(s)[:4] == ["stop_metric", "stop_mode", "best_value", "best_g_step"]
    assert (s["stop_metric"], s["stop_mode"]) == ("val/fid", "min")
    assert (s["best_value"], s["best_g_step"]) == (pytest.approx(55.0), 30)
    assert s["history"] == [[g, pytest.approx(f)] for g, f in s["fid_history"]]
    assert s["plots"] == {"losses": "plots/losses.png", "fid": "plots/fid.png", "stop_metric": "plots/fid.png"}
    assert "augment_history" not in s and s["ada_p"] is None  # no augmentation: no augment history nor plot
    assert_png(tmp_path / "plots" / "losses.png")
    assert_png(tmp_path / "plots" / "fid.png")
    # loss history: every 10 G steps plus the stop point
    assert [row[0] for row in summary_cb.loss_history] == [10, 20, 30, 40, 45]
    assert summary_cb.loss_history[1][1] == pytest.approx(steady(20)["train/d_loss"], rel=1e-6)
    assert summary_cb.loss_history[1][2] == pytest.approx(steady(20)["train/g_loss"], rel=1e-6)
    assert summary_cb.summary == s
    assert not list(tmp_path.glob(".summary.json*"))  # no temporary file left


def test_summary_completed_run_without_other_callbacks(tmp_path):
    module = ScriptedGAN(n_critic=3)
    fit(module, [RunSummary(tmp_path)], g_steps=20)
    s = read_summary(tmp_path)
    assert s["status"] == "completed" and s["stop_reason"] == "max_steps"
    assert (s["g_steps"], s["d_steps"], s["stopped_g_step"]) == (20, 60, 20)
    assert s["best_fid"] is None and s["best_fid_step"] is None and s["fid_history"] == []
    assert s["checkpoint_best"] is None and s["early_termination"] is None and s["fid_eval_time_s"] == 0.0
    assert s["plots"] == {"losses": "plots/losses.png"} and not (tmp_path / "plots" / "fid.png").exists()


def test_best_fid_from_the_fid_monitor_when_no_early_termination(tmp_path):
    fid = ScriptedFID({5: 40.0, 10: 20.0, 15: 30.0})
    fit(ScriptedGAN(), [fid, RunSummary(tmp_path)], g_steps=20)
    s = read_summary(tmp_path)
    assert (s["best_fid"], s["best_fid_step"]) == (20.0, 10)
    assert s["fid_history"] == [[5, 40.0], [10, 20.0], [15, 30.0]]


class ScriptedSignal(GStepCallback):
    """Logs ``val/<name>`` and ``val/<name>_g_step`` at scripted G steps (a stand-in for FIDMonitor's val/mmd)."""

    def __init__(self, name: str, values: dict) -> None:
        self.name, self.values = name, dict(values)

    def on_g_step(self, trainer, pl_module, g):
        if g in self.values:
            pl_module.log_dict({f"val/{self.name}": self.values[g], f"val/{self.name}_g_step": float(g)},
                               on_step=True, on_epoch=False, batch_size=1)


@pytest.mark.parametrize("mode, best", [("min", (5, 0.25)), ("max", (15, 0.75))])
def test_summary_leads_with_the_stop_metric_and_plots_it_beside_the_fid(tmp_path, mode, best):
    fid = ScriptedFID({5: 40.0, 10: 20.0, 15: 30.0})
    signal = ScriptedSignal("score", {5: 0.25, 10: 0.5, 15: 0.75})
    fit(ScriptedGAN(), [fid, signal, RunSummary(tmp_path, stop_metric="val/score", stop_mode=mode)], g_steps=20)
    s = read_summary(tmp_path)
    assert (s["stop_metric"], s["stop_mode"]) == ("val/score", mode)
    assert (s["best_g_step"], s["best_value"]) == best
    assert s["history"] == [[5, 0.25], [10, 0.5], [15, 0.75]]
    assert (s["best_fid"], s["best_fid_step"]) == (20.0, 10)  # the FID fields stay for those who read them
    assert s["plots"]["stop_metric"] == "plots/score.png"
    assert assert_png(tmp_path / "plots" / "score.png").shape[1] == 1100  # two panels: the metric, FID beside it


def test_summary_reads_the_stop_metric_from_best_generator(tmp_path):
    signal = ScriptedSignal("mmd", {4: 0.5, 8: 0.125, 12: 0.25})
    fit(ScriptedGAN(), [signal, BestGenerator(monitor="val/mmd", verbose=False), RunSummary(tmp_path)], g_steps=14)
    s = read_summary(tmp_path)
    assert (s["stop_metric"], s["stop_mode"], s["best_value"], s["best_g_step"]) == ("val/mmd", "min", 0.125, 8)
    assert s["best_generator"]["best_value"] == s["best_value"]
    assert s["plots"]["stop_metric"] == "plots/mmd.png" and "fid" not in s["plots"]  # no FID: one panel
    assert assert_png(tmp_path / "plots" / "mmd.png").shape[1] == 700


def test_summary_of_a_diverged_run_is_valid_json(tmp_path):
    nan_at_12 = lambda g: {**steady(g), "train/d_loss": math.nan if g >= 12 else 1.3}  # noqa: E731
    et = EarlyTermination([Divergence()])
    module = ScriptedGAN(nan_at_12)
    fit(module, [et, RunSummary(tmp_path, loss_log_every_n_g_steps=2)], g_steps=100)
    s = read_summary(tmp_path)  # strict: NaN would be rejected
    assert s["status"] == "diverged" and s["stop_reason"] == "divergence" and s["g_steps"] == 12
    assert s["final_metrics"]["train/d_loss"] is None
    assert "not finite" in s["early_termination"]["stop_message"]
    assert_png(tmp_path / "plots" / "losses.png")


class StopsAt(GStepCallback):
    """A decider of the user's: stops the run at G step ``at`` with ``status`` (publishes a StopRecord)."""

    def __init__(self, at: int, status: str, reason: str) -> None:
        self.at, self.status, self.reason = at, status, reason
        self.stop_record = None

    def on_g_step(self, trainer, pl_module, g):
        if g == self.at:
            self.stop_record = StopRecord(self.status, self.reason, g, type(self).__name__)
            trainer.should_stop = True

    def summary_fields(self, trainer, pl_module):
        return {"status": "ignored: the status is RunSummary's"}


@pytest.mark.parametrize(("script", "other", "expected"), [
    # EarlyTermination diverges at G step 12; a pruner stops at the same step: diverged outranks pruned.
    ("diverge", ("pruned", "pruned"), ("diverged", "divergence")),
    # A plateau and a pruning at the same step: pruned outranks stopped_early.
    ("plateau", ("pruned", "pruned"), ("pruned", "pruned")),
])
def test_the_order_of_the_callbacks_does_not_change_the_status(tmp_path, script, other, expected):
    if script == "diverge":
        def rules():
            return [Divergence()]
        metrics = lambda g: {**steady(g), "train/d_loss": math.nan if g >= 12 else 1.3}  # noqa: E731
        fid = {}
    else:
        def rules():
            return [Plateau(patience=1, window=1)]
        metrics, fid = steady, {6: 50.0, 12: 60.0}
    outcomes = []
    for order in range(2):
        et, pruner = EarlyTermination(rules()), StopsAt(12, *other)
        deciders = [et, pruner] if order == 0 else [pruner, et]
        out = tmp_path / str(order)
        fit(ScriptedGAN(metrics), [ScriptedFID(fid), *deciders, RunSummary(out, plots=False)], g_steps=100)
        s = read_summary(out)
        assert et.stopped_g_step == 12 and pruner.stop_record.g_step == 12
        outcomes.append((s["status"], s["stop_reason"], s["stopped_g_step"]))
    assert outcomes[0] == outcomes[1] == (*expected, 12)


@pytest.mark.parametrize("script", ["diverge", "plateau"])
def test_early_termination_and_optuna_pruning_in_either_order_give_one_status(tmp_path, script):
    """Both real deciders stop at G step 10: the status is the same whichever is registered first (before, the later
    callback's summary_fields overwrote the earlier one's status)."""
    optuna = pytest.importorskip("optuna")
    from lightning_regan.sweep import open_storage
    from lightning_regan.sweep.pruning import OptunaPruning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=6)  # first decision at G step 10
    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), pruner=pruner)
    finished = study.ask()
    for g in range(5, 61, 5):
        finished.report(1.0, g)
    study.tell(finished, 1.0)
    fids = {5: 45.0, 10: 50.0, 15: 40.0}  # worse than the finished trial: pruned at 10; no improvement at 10
    if script == "diverge":
        metrics = lambda g: {**steady(g), "train/d_loss": math.nan if g >= 10 else 1.3}  # noqa: E731
        rules = [Divergence()]
    else:
        metrics, rules = steady, [Plateau(patience=1, window=1)]
    outcomes = []
    for order in range(2):
        et = EarlyTermination(list(rules))
        pruning = OptunaPruning(storage, "s", study.ask().number, pruner)
        deciders = [et, pruning] if order == 0 else [pruning, et]
        out = tmp_path / str(order)
        fit(ScriptedGAN(metrics), [ScriptedFID(fids), *deciders, RunSummary(out, plots=False)], g_steps=60)
        assert et.stopped_g_step == 10 == pruning.pruned_g_step
        s = read_summary(out)
        outcomes.append((s["status"], s["stop_reason"], s["stopped_g_step"]))
    expected = ("diverged", "divergence") if script == "diverge" else ("pruned", "pruned")
    assert outcomes[0] == outcomes[1] == (*expected, 10)


def test_the_earliest_stop_record_wins_then_the_status_rank():
    late_divergence = StopRecord("diverged", "divergence", 20, "EarlyTermination")
    early_plateau = StopRecord("stopped_early", "plateau", 10, "EarlyTermination")
    pruned = StopRecord("pruned", "pruned", 10, "OptunaPruning")
    assert first_stop([late_divergence, early_plateau]) == early_plateau
    assert first_stop([early_plateau, pruned]) == first_stop([pruned, early_plateau]) == pruned
    assert first_stop([]) is None
    with pytest.raises(ValueError, match="status"):
        StopRecord("completed", "max_steps", 1, "x")


def test_exception_writes_a_failed_summary(tmp_path):
    module = ScriptedGAN(fail_at=9)
    trainer = make_trainer(50, [RunSummary(tmp_path, loss_log_every_n_g_steps=2)])
    with pytest.raises(RuntimeError, match="scripted failure"):
        trainer.fit(module, loader())
    s = read_summary(tmp_path)
    assert s["status"] == "failed" and s["stop_reason"] == "RuntimeError"
    assert "scripted failure at G step 9" in s["error"] and s["g_steps"] == 9
    assert_png(tmp_path / "plots" / "losses.png")


def test_summary_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "completed", "x": float("inf"), "t": (1, 2)})
    assert json.loads(path.read_text()) == {"status": "completed", "x": None, "t": [1, 2]}

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "failed"})
    assert json.loads(path.read_text())["status"] == "completed"  # the old file is intact


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="loss_log_every_n_g_steps"):
        RunSummary(tmp_path, loss_log_every_n_g_steps=0)
    with pytest.raises(ValueError, match="output_dir"):
        RunSummary("")


# ---------------------------------------------------------------------------------------------- plots
def test_plot_losses_marks_the_stop(tmp_path):
    history = [(g, 1.3 + 0.1 * math.sin(g), 0.8 + 0.1 * math.cos(g)) for g in range(0, 200, 10)]
    history.append((200, math.nan, math.inf))
    plain = assert_png(plot_losses(history, tmp_path / "plain.png"))
    marked = assert_png(plot_losses(history, tmp_path / "a" / "marked.png", stop=(150, "loss_plateau")))
    assert plain.shape == marked.shape and (plain != marked).any()
    # the stop line is red: many more strongly red pixels than without it
    def red(img):
        return int(((img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)).sum())
    assert red(marked) > red(plain) + 50
    assert_png(plot_losses([], tmp_path / "empty.png"))


def test_plot_fid_marks_best_and_stop(tmp_path):
    history = [(g, 100.0 / (1 + g / 50)) for g in range(50, 1001, 50)]
    plain = assert_png(plot_fid(history, tmp_path / "plain.png"))
    best = (1000, history[-1][1])
    marked = assert_png(plot_fid(history, tmp_path / "fid.png", stop=(1000, "plateau"), best=best))
    assert (plain != marked).any()
    smoothed = assert_png(plot_fid(history, tmp_path / "s.png", smoothed=[(g, f + 5.0) for g, f in history]))
    assert (plain != smoothed).any()

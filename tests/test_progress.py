"""GStepProgressBar: one bar over the G-step budget, redrawn once per G step, resumable, configured by default."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_regan import GANModule, max_steps_for
from lightning_regan.callbacks import GStepProgressBar
from lightning_regan.builders import build_callbacks
from lightning_regan.config import compose_config

from helpers import TinyD, TinyG, point_loader

BATCHES_PER_EPOCH = 2


class FakeFID(Callback):
    """Publishes a ``val/fid`` after every batch, as FIDMonitor does after an evaluation."""

    def on_train_batch_end(self, trainer, pl_module, *_):
        trainer.callback_metrics["val/fid"] = torch.tensor(12.5)


def fit_with_bar(g_steps: int, n_critic: int, tmp_path: Path, ckpt_path: str | None = None,
                 save_every: int = 0) -> tuple[GStepProgressBar, GANModule]:
    L.seed_everything(0, verbose=False)
    module = GANModule(TinyG(), TinyD(), n_critic=n_critic)
    bar = GStepProgressBar(refresh_rate=1)
    callbacks: list[Callback] = [FakeFID(), bar]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1,
                                         filename="{step}"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(g_steps, n_critic), max_epochs=-1,
                        logger=False, callbacks=callbacks, enable_checkpointing=bool(save_every),
                        enable_model_summary=False)
    trainer.fit(module, point_loader(n=32 * BATCHES_PER_EPOCH), ckpt_path=ckpt_path,
                weights_only=True if ckpt_path else None)
    return bar, module


def drawn_counts(text: str, total: int) -> list[int]:
    """The ``n`` of every ``n/total`` the bar drew, in order."""
    return [int(n) for n in re.findall(rf"(\d+)/{total} \[", text)]


def test_bar_spans_the_run_in_g_steps_and_shows_losses_and_fid(tmp_path, capsys):
    # n_critic=2 and 2 batches per epoch: 6 G steps take 18 batches over 9 epochs.
    bar, module = fit_with_bar(6, n_critic=2, tmp_path=tmp_path)
    out = capsys.readouterr().out
    assert module.g_steps == 6
    counts = drawn_counts(out, 6)
    # One bar from 0 to the budget, each G step drawn once (not once per D step), never restarted per epoch.
    assert counts == sorted(counts) and set(counts) == set(range(7)), counts
    assert counts.count(3) == 1
    assert "G steps" in out and "Epoch" not in out
    final = out.rsplit("\r", 1)[-1]
    assert re.search(r"d_loss=[-\d.e]+, g_loss=[-\d.e]+, fid=12\.5", final), final
    assert bar.train_progress_bar.n == 6 and bar.train_progress_bar.total == 6


class FakeMMD(Callback):
    """Publishes ``val/mmd`` (and its G step) at G steps 2, 4, 6: 0.5, 0.125, 0.25."""

    def on_train_batch_end(self, trainer, pl_module, *_):
        value = {2: 0.5, 4: 0.125, 6: 0.25}.get(pl_module.g_steps)
        if value is not None:
            trainer.callback_metrics["val/mmd"] = torch.tensor(value)
            trainer.callback_metrics["val/mmd_g_step"] = torch.tensor(float(pl_module.g_steps))


@pytest.mark.parametrize("from_callback", [False, True])
def test_bar_shows_the_stop_metric_and_its_best_first(tmp_path, capsys, from_callback):
    from lightning_regan.callbacks import BestGenerator

    L.seed_everything(0, verbose=False)
    bar = GStepProgressBar(refresh_rate=3) if from_callback else GStepProgressBar(refresh_rate=3, stop_metric="val/mmd")
    extra = [BestGenerator(monitor="val/mmd", verbose=False)] if from_callback else []
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(6, 1), logger=False, max_epochs=-1,
                        callbacks=[FakeFID(), FakeMMD(), *extra, bar], enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(GANModule(TinyG(), TinyD()), point_loader(n=64))
    final = capsys.readouterr().out.rsplit("\r", 1)[-1]
    # the best (0.125 at G step 4) counts although the bar was drawn at G steps 3 and 6 only
    assert re.search(r"\[.*, mmd=0\.25, best_mmd=0\.125, d_loss=[-\d.e]+, g_loss=[-\d.e]+, fid=12\.5", final), final


def test_resumed_run_starts_the_bar_at_the_checkpoints_g_step(tmp_path, capsys):
    fit_with_bar(2, n_critic=1, tmp_path=tmp_path, save_every=4)  # global_step 4 = G step 2
    capsys.readouterr()
    bar, module = fit_with_bar(5, n_critic=1, tmp_path=tmp_path, ckpt_path=str(tmp_path / "step=4.ckpt"))
    out = capsys.readouterr().out
    assert module.g_steps == 5
    counts = drawn_counts(out, 5)
    assert counts[0] == 2 and counts[-1] == 5 and sorted(set(counts)) == [2, 3, 4, 5], counts
    # Rate and remaining time count this session's steps only.
    assert bar.train_progress_bar.initial == 2


def test_early_stop_leaves_the_bar_at_the_stopping_g_step(tmp_path, capsys):
    class StopAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, *_):
            if pl_module.g_steps == 3:
                trainer.should_stop = True

    L.seed_everything(0, verbose=False)
    module = GANModule(TinyG(), TinyD())
    bar = GStepProgressBar(refresh_rate=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(10, 1), logger=False,
                        callbacks=[StopAt(), bar], enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, point_loader(n=64))
    counts = drawn_counts(capsys.readouterr().out, 10)
    # Drawn: the start, G step 2 (refresh_rate=2 skips 1), and the G step where the run stopped, last.
    assert sorted(set(counts)) == [0, 2, 3] and counts[-1] == 3, counts
    assert bar.train_progress_bar.n == 3


def test_bar_without_a_step_budget_has_no_total(tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
    assert GStepProgressBar.max_g_steps_of(trainer, GANModule(TinyG(), TinyD())) is None


def test_negative_refresh_rate_is_refused():
    with pytest.raises(ValueError, match=r"refresh_rate \(0 hides the bar\) must be an integer >= 0"):
        GStepProgressBar(refresh_rate=-1)


@pytest.mark.parametrize(("overrides", "expected"), [
    ((), True),
    (("trainer.enable_progress_bar=false",), False),  # Lightning refuses a bar callback with the bar off
    (("~callbacks.progress_bar",), False),  # Lightning's own bar
])
def test_regan_train_uses_the_g_step_bar_unless_told_otherwise(tmp_path, overrides, expected):
    cfg = compose_config([*overrides, f"output_dir={tmp_path}"])
    callbacks = build_callbacks(cfg)
    assert any(isinstance(cb, GStepProgressBar) for cb in callbacks) is expected

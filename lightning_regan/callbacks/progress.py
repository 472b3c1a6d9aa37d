"""A progress bar that counts what a GAN's budget is counted in: generator updates over the whole run."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Union

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_regan.callbacks.g_step import GStepCallback, g_step_budget, g_steps_of
from lightning_regan.protocol import GANModuleLike
from lightning_regan.validation import check_int

#: ``trainer.callback_metrics`` keys shown next to the bar (as their last path component) when present.
DEFAULT_METRICS: tuple[str, ...] = ("train/d_loss", "train/g_loss", "val/fid")


class GStepProgressBar(GStepCallback, TQDMProgressBar):
    """Lightning's tqdm bar, over the run's G-step budget instead of the batches of one epoch.

    A GAN run is budgeted in generator updates and crosses many short epochs (the default digits run: 2,000 G steps
    in 84 epochs), so a per-epoch bar restarts every few seconds and never says how far the run is. This bar shows
    ``G steps: 45%|####  | 900/2000 [elapsed<remaining, rate, d_loss=..., g_loss=..., fid=...]``, starts at the resumed
    count when a run resumes, and stops where early termination stops the run. It also avoids Lightning's
    ``RichProgressBar`` label ``Epoch 5/-2`` under ``max_epochs=-1`` (Lightning issue #21925, fixed after 2.6).

    Args:
        refresh_rate: Redraw every this many G steps (0 hides the bar).
        metrics: ``trainer.callback_metrics`` keys shown after the bar, when present, under their last path
            component (``train/d_loss`` -> ``d_loss``).
        process_position: Offset of the bar in lines, as in ``TQDMProgressBar``.
    """

    def __init__(self, refresh_rate: int = 10, metrics: Sequence[str] = DEFAULT_METRICS,
                 process_position: int = 0) -> None:
        check_int("GStepProgressBar", "refresh_rate (0 hides the bar)", refresh_rate, 0)
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.metrics = tuple(metrics)

    #: The G-step budget implied by ``trainer.max_steps``, or None when the run has no step budget.
    max_g_steps_of = staticmethod(g_step_budget)

    def init_train_tqdm(self) -> Tqdm:
        """The training bar, from the G steps already done (a resumed run) to the budget."""
        trainer = self.trainer
        module = trainer.lightning_module
        return Tqdm(
            desc="G steps",
            total=self.max_g_steps_of(trainer, module),
            # Rate and remaining time count this session's steps only, when resuming.
            initial=g_steps_of(trainer, module),
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Nothing: the bar spans the run, not an epoch."""

    def on_g_step(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> None:
        total = self.train_progress_bar.total
        if self.refresh_rate > 0 and (g_step % self.refresh_rate == 0 or g_step == total):
            self._show(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the bar is redrawn by G step and closed at the end of training."""

    def on_train_end(self, trainer: L.Trainer, pl_module: GANModuleLike) -> None:
        self._show(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def _show(self, trainer: L.Trainer, pl_module: GANModuleLike) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        bar.n = g_steps_of(trainer, pl_module)
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer: L.Trainer,
                    pl_module: L.LightningModule) -> dict[str, Union[int, str, float, dict[str, float]]]:
        """Lightning's items (logger version, ``prog_bar`` metrics) and the configured ``metrics``."""
        items = super().get_metrics(trainer, pl_module)
        for key in self.metrics:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                items[key.rsplit("/", 1)[-1]] = float(value)
        return items

"""A progress bar that counts what a GAN's budget is counted in: generator updates over the whole run."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_regan.callbacks.g_step import GStepCallback, g_step_budget, g_steps_of
from lightning_regan.stop_metric import MetricHistory, find_stop_metric, metric_mode
from lightning_regan.protocol import GANModuleLike
from lightning_regan.validation import check_int

#: ``trainer.callback_metrics`` keys shown next to the bar (as their last path component) when present.
DEFAULT_METRICS: tuple[str, ...] = ("train/d_loss", "train/g_loss", "val/fid")


class GStepProgressBar(GStepCallback, TQDMProgressBar):
    """Lightning's tqdm bar, over the run's G-step budget instead of the batches of one epoch.

    A GAN run is budgeted in generator updates and crosses many short epochs (the default digits run: 2,000 G steps
    in 84 epochs), so a per-epoch bar restarts every few seconds and never says how far the run is. This bar shows
    ``G steps: 45%|####  | 900/2000 [elapsed<remaining, rate, mmd=..., best_mmd=..., d_loss=..., g_loss=..., fid=...]``
    (the stop metric's last and best value first), starts at the resumed count when a run resumes, and stops where
    early termination stops the run. It also avoids Lightning's
    ``RichProgressBar`` label ``Epoch 5/-2`` under ``max_epochs=-1`` (Lightning issue #21925, fixed after 2.6).

    Args:
        refresh_rate: Redraw every this many G steps (0 hides the bar).
        metrics: ``trainer.callback_metrics`` keys shown after the bar, when present, under their last path
            component (``train/d_loss`` -> ``d_loss``).
        process_position: Offset of the bar in lines, as in ``TQDMProgressBar``.
        stop_metric: The metric the run decides on, shown first with its best value (``mmd=...``,
            ``best_mmd=...``); ``None`` takes it from the deciding callbacks (``BestGenerator``'s ``monitor``, ...,
            :func:`~lightning_regan.stop_metric.find_stop_metric`).
        stop_mode: ``"min"`` or ``"max"``; ``None``: that callback's, else the metric's.
    """

    def __init__(self, refresh_rate: int = 10, metrics: Sequence[str] = DEFAULT_METRICS,
                 process_position: int = 0, stop_metric: Optional[str] = None,
                 stop_mode: Optional[str] = None) -> None:
        check_int("GStepProgressBar", "refresh_rate (0 hides the bar)", refresh_rate, 0)
        if stop_mode not in (None, "min", "max"):
            raise ValueError(f"GStepProgressBar: stop_mode must be 'min' or 'max', got {stop_mode!r}.")
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.metrics = tuple(metrics)
        self.stop_metric = stop_metric
        self.stop_mode = stop_mode
        #: The stop metric's evaluations seen by the bar (its best is shown); ``None`` when the run has none.
        self.stop_history: Optional[MetricHistory] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        metric, mode = self.stop_metric, self.stop_mode
        if metric is None:
            found = find_stop_metric(trainer.callbacks)
            metric, mode = (found[0], mode or found[1]) if found else (None, None)
        self.stop_history = MetricHistory(metric, mode or metric_mode(metric)) if metric else None

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
        if self.stop_history is not None:  # every evaluation counts for the best, shown or not
            self.stop_history.read(trainer.callback_metrics, g_step)
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
        items: dict[str, Union[int, str, float, dict[str, float]]] = {}
        stop = self.stop_history
        if stop is not None:
            stop.read(trainer.callback_metrics, g_steps_of(trainer, pl_module))
            best = stop.best
            if stop.last is not None:
                name = stop.metric.rsplit("/", 1)[-1]
                # 4 significant digits as text: the bar's own 3 decimals would show an MMD² of 2e-4 as 0.000
                items[name] = f"{stop.last:.4g}"
                if best is not None:
                    items[f"best_{name}"] = f"{best[1]:.4g}"
        for key, value in super().get_metrics(trainer, pl_module).items():
            items.setdefault(key, value)
        for key in self.metrics:
            value = trainer.callback_metrics.get(key)
            if value is not None and (stop is None or key != stop.metric):
                items.setdefault(key.rsplit("/", 1)[-1], float(value))
        return items

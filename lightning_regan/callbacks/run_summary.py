"""RunSummary: ``summary.json`` and ``plots/`` at the end of every run, also when it stopped or failed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import lightning as L

from lightning_regan.atomic import is_disk_full, json_safe, write_json_atomic
from lightning_regan.callbacks.g_step import GStepCallback, check_int, g_steps_of, is_due
from lightning_regan.stop_metric import MetricHistory, find_stop_metric, metric_mode
from lightning_regan.logged import to_float
from lightning_regan.stopping.base import StopRecord, first_stop

log = logging.getLogger(__name__)


@runtime_checkable
class SummaryFields(Protocol):
    """What a callback implements to contribute to ``summary.json`` (``FIDMonitor``, ``EarlyTermination``,
    ``ModeCoverageMonitor``; any user callback may too)."""

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """JSON-friendly entries of ``summary.json`` (``fid_history``, ``early_termination``, ...; never ``status``,
        which is :class:`RunSummary`'s)."""


@runtime_checkable
class StopDecider(Protocol):
    """What a callback that may stop the run exposes (``EarlyTermination``, ``OptunaPruning``; any user callback may
    too): ``stop_record`` is a :class:`~lightning_regan.stopping.StopRecord` once it stopped the run, else ``None``."""

    stop_record: Optional[StopRecord]


class RunSummary(GStepCallback):
    """Write ``summary.json`` and ``plots/`` (losses, the stop metric's curve, FID) into ``output_dir``.

    ``summary.json`` leads with the stop metric, the one number the run decides on (``stop_metric``, e.g.
    ``val/mmd``): its name, ``stop_mode``, ``best_value``, ``best_g_step`` and ``history`` (``[[g_step, value], ...]``
    of each evaluation, read from ``trainer.callback_metrics``); the FID fields (``best_fid``, ``fid_history``, ...)
    follow for those who read them.

    ``summary.json`` is written on rank zero at ``on_fit_end`` (also after an early stop or a divergence)
    and from ``on_exception`` with status ``"failed"`` and the exception's class as ``stop_reason``. It
    follows the product schema (:meth:`build_summary`) plus ``stopped_g_step``, ``global_step``, ``checkpoint_last``,
    ``final_metrics``, ``early_termination``, ``plots`` and, on failure, ``error``.
    Steps count generator updates. Every callback with a ``summary_fields(trainer, pl_module) -> dict`` method
    (:class:`SummaryFields`) contributes its entries, in callback order; the checkpoint paths come from
    ``trainer.checkpoint_callbacks``. Each is optional.

    This callback alone sets ``status``, ``stop_reason`` and ``stopped_g_step``: from the
    :class:`~lightning_regan.stopping.StopRecord` of the deciders (:class:`StopDecider`) that stopped the run, the
    earliest G step first and, at the same step, by :data:`~lightning_regan.stopping.STATUS_RANKS` (diverged >
    pruned > stopped_early), so the order of the callbacks never changes the result; else from how the Trainer
    ended; ``failed`` on an exception.

    Args:
        output_dir: Folder of ``summary.json`` and ``plots/``.
        loss_log_every_n_g_steps: Keep ``(g_step, d_loss, g_loss)`` for the loss plot every this many G steps.
        d_loss_key: Logged D loss.
        g_loss_key: Logged G loss.
        plots: Write the plots.
        stop_metric: The logged metric the run decides on (``${stop_metric}`` in the configs); ``None`` takes the
            ``monitor`` of a ``BestGenerator``, else of the first evaluation rule of an ``EarlyTermination``, else of
            a ``ModelCheckpoint`` (none of these: no stop metric, ``best_value`` is ``null``).
        stop_mode: ``"min"`` or ``"max"``; ``None`` takes that callback's ``mode``, else the metric's
            (:func:`~lightning_regan.stop_metric.metric_mode`).
    """

    def __init__(
        self,
        output_dir: Union[str, Path],
        loss_log_every_n_g_steps: int = 10,
        d_loss_key: str = "train/d_loss",
        g_loss_key: str = "train/g_loss",
        plots: bool = True,
        stop_metric: Optional[str] = None,
        stop_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if stop_metric is not None and (not isinstance(stop_metric, str) or not stop_metric):
            raise ValueError(f"RunSummary: stop_metric must be a logged metric's name such as val/mmd, got {stop_metric!r}.")
        if stop_mode not in (None, "min", "max"):
            raise ValueError(f"RunSummary: stop_mode must be 'min' or 'max', got {stop_mode!r}.")
        self.stop_metric = stop_metric
        self.stop_mode = stop_mode
        if output_dir is None or str(output_dir) == "":
            raise ValueError("RunSummary: output_dir must be a folder path, e.g. output_dir=outputs/run1.")
        check_int("RunSummary", "loss_log_every_n_g_steps", loss_log_every_n_g_steps, 1)
        self.output_dir = Path(output_dir)
        self.loss_log_every_n_g_steps = loss_log_every_n_g_steps
        self.d_loss_key = d_loss_key
        self.g_loss_key = g_loss_key
        self.plots = bool(plots)
        #: Rows ``(g_step, d_loss, g_loss)`` recorded during training (kept in checkpoints).
        self.loss_history: list[tuple[int, Optional[float], Optional[float]]] = []
        #: Rows ``(g_step, train/ada_p, train/rt)`` at the same G steps (ADA's p, the overfitting heuristic r_t).
        self.augment_history: list[tuple[int, Optional[float], Optional[float]]] = []
        #: The last summary written (also on failure).
        self.summary: Optional[dict[str, Any]] = None
        self._start: Optional[float] = None
        #: Wall time of the run before this process resumed it (from the checkpoint), so ``wall_time_s`` is the
        #: whole run's: the time up to the checkpoint plus this process's part (work lost after it is not counted).
        self._elapsed_before = 0.0
        #: The stop metric's evaluations (set up at ``setup``, when the callbacks are known).
        self.stop_history: Optional[MetricHistory] = None
        self._stop_state: Optional[dict[str, Any]] = None

    @property
    def summary_path(self) -> Path:
        return self.output_dir / "summary.json"

    def state_dict(self) -> dict[str, Any]:
        state = {"loss_history": [list(row) for row in self.loss_history], "wall_time_s": self.wall_time_s(),
                 "augment_history": [list(row) for row in self.augment_history]}
        stop = self.stop_history.state_dict() if self.stop_history is not None else self._stop_state
        if stop is not None:
            state["stop_metric"] = stop
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loss_history = [(int(r[0]), r[1], r[2]) for r in state_dict.get("loss_history") or []]
        self._elapsed_before = float(state_dict.get("wall_time_s", 0.0))
        self.augment_history = [(int(r[0]), r[1], r[2]) for r in state_dict.get("augment_history") or []]
        self._stop_state = state_dict.get("stop_metric")  # older checkpoints: none (the history restarts)
        if self.stop_history is not None and self._stop_state is not None:
            self.stop_history.load_state_dict(self._stop_state)

    def _resolve_stop_metric(self, trainer: L.Trainer) -> None:
        """Name the stop metric (argument, else the deciding callbacks') and start its history."""
        if self.stop_history is not None:
            return
        metric, mode = self.stop_metric, self.stop_mode
        if metric is None:
            found = find_stop_metric(trainer.callbacks)
            if found is None:
                return
            metric, mode = found[0], mode or found[1]
        self.stop_history = MetricHistory(metric, mode or metric_mode(metric))
        if self._stop_state is not None:
            self.stop_history.load_state_dict(self._stop_state)

    def _read_stop_metric(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stop_history is not None and not (trainer.sanity_checking or trainer.fast_dev_run):
            self.stop_history.read(trainer.callback_metrics, g_steps_of(trainer, pl_module))

    def wall_time_s(self) -> float:
        """Seconds of training so far, including the parts run before a resume."""
        return self._elapsed_before + (0.0 if self._start is None else time.monotonic() - self._start)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._resolve_stop_metric(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        self._resolve_stop_metric(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._read_stop_metric(trainer, pl_module)  # an evaluation logged after our last batch end

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        self._read_stop_metric(trainer, pl_module)
        if is_due(g_step, self.loss_log_every_n_g_steps):
            self._record_losses(trainer, pl_module, g_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            self._finish(trainer, pl_module, exception)
        except Exception as err:  # never replace the run's own exception with ours
            if is_disk_full(err) and is_disk_full(exception):
                return  # the run's own error already says the disk is full (regan-train: one line naming it)
            log.error("RunSummary: could not write %s after %s: %s", self.summary_path, type(exception).__name__, err)

    # ------------------------------------------------------------------ internals
    def _record_losses(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        if self.loss_history and self.loss_history[-1][0] >= g_step:
            return
        metrics = trainer.callback_metrics
        d_loss, g_loss = (to_float(metrics[k]) if k in metrics else None for k in (self.d_loss_key, self.g_loss_key))
        if d_loss is not None or g_loss is not None:
            self.loss_history.append((g_step, d_loss, g_loss))
        if getattr(pl_module, "augment", None) is None:
            return  # r_t without augmentation stays in the logged metrics, not in the summary or plots
        ada_p, rt = (to_float(metrics[k]) if k in metrics else None for k in ("train/ada_p", "train/rt"))
        if ada_p is not None or rt is not None:
            self.augment_history.append((g_step, ada_p, rt))

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, failure: Optional[BaseException]) -> None:
        g_step = g_steps_of(trainer, pl_module)
        if g_step > 0:
            self._record_losses(trainer, pl_module, g_step)  # the last point, where training stopped
        self._read_stop_metric(trainer, pl_module)  # a final evaluation logged after our last batch end
        if not trainer.is_global_zero:
            return
        summary = self.build_summary(trainer, pl_module, failure)
        if self.plots:
            from lightning_regan.plots import plot_run

            summary["plots"] = plot_run(summary, self.loss_history, self.output_dir / "plots")
        self.summary = summary
        write_json_atomic(self.summary_path, summary)
        if trainer.loggers:  # W&B / MLflow: the stop metric's best as the run's summary metric, plots and samples
            from lightning_regan.tracking import publish_run

            images = [self.output_dir / rel for rel in dict.fromkeys((summary.get("plots") or {}).values())]
            images += [cb.last_path for cb in trainer.callbacks if hasattr(cb, "last_path")]
            publish_run(trainer.loggers, summary, images)
        log.info("RunSummary: %s (%s) -> %s", summary["status"], summary["stop_reason"], self.summary_path)

    def build_summary(
        self, trainer: L.Trainer, pl_module: L.LightningModule, failure: Optional[BaseException] = None
    ) -> dict[str, Any]:
        """The summary as a dict (what ``summary.json`` holds, without ``plots``)."""
        g_steps = g_steps_of(trainer, pl_module)
        status, stop_reason = self._natural_end(trainer)
        checkpoint_best = checkpoint_last = None
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", ""):
                checkpoint_best = cb.best_model_path
            if getattr(cb, "last_model_path", ""):
                checkpoint_last = cb.last_model_path
        stop = self.stop_history
        best = stop.best if stop is not None else None
        summary: dict[str, Any] = {
            # the stop metric first: the number the run decides on (and best.ckpt / BestGenerator follow)
            "stop_metric": stop.metric if stop is not None else None,
            "stop_mode": stop.mode if stop is not None else None,
            "best_value": best[1] if best else None,
            "best_g_step": best[0] if best else None,
            "status": status,
            "stop_reason": stop_reason,
            "g_steps": g_steps,
            "d_steps": int(getattr(pl_module, "d_steps", 0)),
            # class conditioning: number of classes (null: unconditional) and how fake labels are drawn
            "num_classes": getattr(pl_module, "num_classes", None),
            "label_sampling": None if getattr(pl_module, "num_classes", None) is None else (
                "uniform" if getattr(pl_module, "label_probs", None) is None else "label_probs"),
            "wall_time_s": self.wall_time_s(),
            "history": [[g, v] for g, v in stop.history] if stop is not None else [],
            "fid_eval_time_s": 0.0,
            "best_fid": None,
            "best_fid_step": None,
            "fid_history": [],
            "checkpoint_best": checkpoint_best,
            "world_size": int(trainer.world_size),
            "stopped_g_step": g_steps,
            "global_step": int(trainer.global_step),
            "checkpoint_last": checkpoint_last,
            "final_metrics": {k: json_safe(v) for k, v in sorted(trainer.callback_metrics.items())},
            "early_termination": None,
            # augmentation (lightning_regan.augment): ADA's last p, the last r_t = E[sign(D(real))], their history
            "ada_p": self.augment_history[-1][1] if self.augment_history else None,
            "rt": self.augment_history[-1][2] if self.augment_history else None,
            # fine-tuning: where the weights were started from (GANModule.load_pretrained, init_from), else null
            "init_from": getattr(pl_module, "initialized_from", None),
        }
        if self.augment_history:  # only when augmenting
            summary["augment_history"] = [list(row) for row in self.augment_history]
        own = ("status", "stop_reason", "stopped_g_step", "stop_metric", "stop_mode", "best_value", "best_g_step",
               "history")
        for cb in trainer.callbacks:
            if cb is not self and isinstance(cb, SummaryFields):
                fields = cb.summary_fields(trainer, pl_module)
                summary.update({k: v for k, v in fields.items() if k not in own})
        record = first_stop([cb.stop_record for cb in trainer.callbacks
                             if isinstance(cb, StopDecider) and isinstance(cb.stop_record, StopRecord)])
        if record is not None:
            summary.update(status=record.status, stop_reason=record.reason, stopped_g_step=record.g_step)
        if failure is not None:
            summary["status"], summary["stop_reason"] = "failed", type(failure).__name__
            summary["error"] = f"{type(failure).__name__}: {failure}"[:2000]
        return summary

    @staticmethod
    def _natural_end(trainer: L.Trainer) -> tuple[str, str]:
        """Status and reason of a run that no decider stopped."""
        if trainer.fast_dev_run:
            return "completed", "fast_dev_run"
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
            return "completed", "max_steps"
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs:
            return "completed", "max_epochs"
        if trainer.should_stop:
            return "stopped_early", "trainer_should_stop"
        return "completed", "max_steps"


__all__ = ["RunSummary", "StopDecider", "SummaryFields", "write_json_atomic"]

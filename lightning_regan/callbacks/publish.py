"""How evaluation callbacks hand their numbers to Lightning: callback_metrics on every rank, and the loggers."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch


def publish_eval_metrics(trainer: L.Trainer, pl_module: L.LightningModule, metrics: Mapping[str, float],
                         log_now: bool) -> None:
    """Put ``metrics`` (the same values on every rank) where checkpoints, stop rules and loggers read them.

    Args:
        trainer: The running trainer.
        pl_module: The module being trained.
        metrics: Name -> value, already identical on all ranks (no reduction is done here).
        log_now: True inside a training hook (``self.log`` is allowed); False in ``on_train_end``, where the values
            are written into ``trainer.callback_metrics`` directly.
    """
    if log_now:  # callback_metrics (ModelCheckpoint / EarlyTermination read them)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, logger=False, rank_zero_only=False,
                          sync_dist=False, batch_size=1)
    else:
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
    # Straight to the loggers: self.log(on_step=True) reaches them only every `log_every_n_steps` batches, which
    # would drop most evaluations.
    step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)

"""The G-step event and metric publishing, shared by every callback that works in generator updates.

A GAN run is counted in generator updates (G steps); Lightning counts batches and optimizer steps. Here, and only
here, batches become G-step events: ``GANModule.training_step`` records whether its batch took a G step
(``g_step_taken``) and :class:`GStepCallback` turns that into one ``on_g_step(trainer, pl_module, g_step)`` call.
Evaluation callbacks hand their values to Lightning with :func:`publish_metrics` (public API only); decision
callbacks read them back with :mod:`lightning_regan.logged`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_regan.protocol import GANModuleLike
from lightning_regan.steps import g_step_budget, g_steps_of, is_due  # noqa: F401  (public here too)
from lightning_regan.validation import check_int  # noqa: F401  (public here too: the callbacks' checks)


#: Stages of a batch's end, in the order callbacks must run (``builders.build_callbacks`` sorts by ``stage``):
#: evaluations publish metrics, decisions read them, outputs record the outcome.
EVALUATION, DECISION, OUTPUT = 0, 1, 2


class GStepCallback(Callback):
    """Base class of the callbacks that act on G steps: implement :meth:`on_g_step`.

    ``on_g_step`` runs once per generator update, at the end of the batch that took it (with ``n_critic > 1`` the
    other batches end without one). A module without ``g_step_taken`` counts every batch as a G step. ``stage``
    declares where the callback belongs in a batch's end (:data:`EVALUATION`, :data:`DECISION` or :data:`OUTPUT`).
    """

    stage: ClassVar[int] = OUTPUT

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if getattr(pl_module, "g_step_taken", True):
            self.on_g_step(trainer, pl_module, g_steps_of(trainer, pl_module))

    def on_g_step(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> None:
        """Called once per G step with the number of G steps taken so far."""


def publish_metrics(trainer: L.Trainer, pl_module: L.LightningModule, metrics: Mapping[str, float],
                    in_training: bool = True) -> None:
    """Hand values that are already identical on every rank to ``trainer.callback_metrics`` and every logger.

    ``pl_module.log(..., logger=False)`` fills ``callback_metrics`` (``ModelCheckpoint``, ``EarlyStopping`` and the
    stop rules read them there; outside a training hook, ``in_training=False``, the dict is written directly); the
    loggers get them at once with ``Logger.log_metrics`` at Lightning's step, because ``self.log(on_step=True)``
    reaches them only every ``log_every_n_steps`` batches, and then again, stale, at every later logging step.
    """
    for name, value in metrics.items():
        if in_training:
            pl_module.log(name, float(value), on_step=True, on_epoch=False, logger=False, rank_zero_only=False,
                          sync_dist=False, batch_size=1)
        else:
            trainer.callback_metrics[name] = torch.tensor(float(value))
    # Lightning's logger step during a batch counts the batches before it: GANModule takes one D step per batch.
    d_steps = getattr(pl_module, "d_steps", None)
    step = max(int(d_steps) - 1, 0) if d_steps is not None else int(trainer.global_step)
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


__all__ = ["DECISION", "EVALUATION", "OUTPUT", "GStepCallback", "check_int", "g_step_budget", "g_steps_of", "is_due", "publish_metrics"]

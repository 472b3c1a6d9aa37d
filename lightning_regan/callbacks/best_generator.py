"""BestGenerator: keep a CPU copy of the generator at the best evaluation of a metric and hand it back at the end."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import lightning as L
from torch import Tensor

from lightning_regan.callbacks.g_step import GStepCallback, g_step_budget, g_steps_of
from lightning_regan.logged import NewEvaluations
from lightning_regan.stopping.base import check_keys, check_mode
from lightning_regan.validation import check_bool

log = logging.getLogger(__name__)

RESTORE_CHOICES = ("on_stop", "always", "never")


class BestGenerator(GStepCallback):
    """Keep the generator of the best ``monitor`` value and load it back when training ends.

    At each new evaluation of ``monitor`` (a new ``<monitor>_g_step``, else a changed value) that beats the best
    (lower for ``mode="min"``, higher for ``"max"``), a CPU copy of ``pl_module.eval_generator`` (the EMA copy when EMA
    is on) is taken, if the evaluation is of the current G step (an older evaluation's generator no longer exists).
    At the end of training the copy is loaded back: with ``restore="on_stop"`` only when a callback stopped the run
    before its budget (early termination, pruning), with ``"always"`` also at the budget. The copy is kept in this
    callback's checkpoint state, so a resumed run hands back the same generator.

    Args:
        monitor: The metric (``val/fid`` here; ``${stop_metric}``, i.e. ``val/mmd``, in the configs).
        mode: ``"min"`` when lower is better, ``"max"`` when higher is.
        restore: ``"on_stop"``, ``"always"`` or ``"never"`` (only track the best).
        verbose: Log new bests and the restore (rank zero).
        step_key: The logged G step of each evaluation (``None``: ``<monitor>_g_step``).

    Attributes:
        best_value: The best value seen, or ``None``; ``best_g_step`` its G step.
        best_generator_step: G step of the kept copy (``None``: no copy of the best).
        restored: Whether the copy was loaded back; ``restored_into`` says where (``generator``/``ema_generator``).
    """

    def __init__(self, monitor: str = "val/fid", mode: str = "min", restore: str = "on_stop",
                 verbose: bool = True, step_key: Optional[str] = None) -> None:
        super().__init__()
        self.monitor = check_keys("BestGenerator", "monitor", monitor)[0]
        self.mode = check_mode("BestGenerator", mode)
        if restore not in RESTORE_CHOICES:
            raise ValueError(f"BestGenerator: restore must be one of {', '.join(map(repr, RESTORE_CHOICES))}, "
                             f"got {restore!r}.")
        self.restore = restore
        self.verbose = check_bool("BestGenerator", "verbose", verbose)
        self.best_value: Optional[float] = None
        self.best_g_step: Optional[int] = None
        self.best_generator_step: Optional[int] = None
        self.restored = False
        self.restored_into: Optional[str] = None
        self._weights: Optional[dict[str, Tensor]] = None
        step_key = f"{self.monitor}_g_step" if step_key is None else check_keys("BestGenerator", "step_key", step_key)[0]
        self._evaluations = NewEvaluations(self.monitor, step_key)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_g_step": self.best_g_step,
                "best_generator_step": self.best_generator_step, "weights": self._weights,
                "last_step": self._evaluations.last_step, "last_value": self._evaluations.last_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value")
        self.best_g_step = state_dict.get("best_g_step")
        self.best_generator_step = state_dict.get("best_generator_step")
        self._weights = state_dict.get("weights")
        self._evaluations.last_step = state_dict.get("last_step")
        self._evaluations.last_value = state_dict.get("last_value")

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def _ingest(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        now = g_steps_of(trainer, pl_module)
        new = self._evaluations.read(trainer.callback_metrics, now)
        if new is None or not self._better(new[1]):
            return
        g_step, value = new
        self.best_value, self.best_g_step = value, g_step
        # Only a copy taken at the evaluated step is that generator (an older copy is no longer the best).
        generator = getattr(pl_module, "eval_generator", None)
        self._weights, self.best_generator_step = None, None
        if generator is not None and g_step == now:
            self._weights = {k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()}
            self.best_generator_step = g_step
        if self.verbose and trainer.is_global_zero:
            log.info("BestGenerator: new best %s = %.4g at G step %d.", self.monitor, value, g_step)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restored, self.restored_into = False, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # An evaluation logged after our batch end (a monitor registered after us): the generator has not moved since.
        self._ingest(trainer, pl_module)

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        self._ingest(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._ingest(trainer, pl_module)  # a final evaluation logged after our last batch end
        if self.restore == "never" or self.best_value is None:
            return
        if self.restore == "on_stop":
            budget = g_step_budget(trainer, pl_module)
            if not (trainer.should_stop and (budget is None or g_steps_of(trainer, pl_module) < budget)):
                return
        target = getattr(pl_module, "eval_generator", None)
        if self._weights is None or target is None:
            if self.verbose and trainer.is_global_zero:
                log.info("BestGenerator: no copy of the generator of the best %s (G step %s) was taken; not restored.",
                         self.monitor, self.best_g_step)
            return
        target.load_state_dict(self._weights)
        ema = getattr(pl_module, "ema_generator", None)
        self.restored_into = "ema_generator" if ema is not None and target is getattr(ema, "module", None) else "generator"
        self.restored = True
        if self.verbose and trainer.is_global_zero:
            log.info("BestGenerator: restored the %s of the best %s = %.4g (G step %s).",
                     self.restored_into, self.monitor, self.best_value, self.best_generator_step)

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``summary.json``'s ``best_generator`` entry."""
        return {"best_generator": {
            "monitor": self.monitor, "mode": self.mode, "restore": self.restore, "best_value": self.best_value,
            "best_g_step": self.best_g_step, "restored": self.restored, "restored_into": self.restored_into,
            "restored_g_step": self.best_generator_step if self.restored else None,
        }}


__all__ = ["BestGenerator"]

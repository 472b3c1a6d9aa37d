"""EarlyTermination: the decision callback that stops GAN training on a plateau or on divergence.

Evaluation lives elsewhere (``FIDMonitor`` logs ``val/fid``); this callback only reads metrics, feeds the
pure rules of :mod:`lightning_regan.stopping`, reduces the decision over ranks and stops the Trainer. It
also keeps the generator of the best FID and puts it back into the model when training ends.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_regan.stopping import (
    CODE_REASONS,
    FID_RULES,
    REASON_CODES,
    Collapse,
    Divergence,
    LossPlateau,
    StopReason,
    StopRule,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
# Which FIDMonitor history holds the evaluations of a monitored metric.
_HISTORY_OF = {"val/fid": "history", "val/kid": "kid_history"}


def g_steps_of(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """G steps taken so far: ``pl_module.g_steps`` (GANModule contract), else ``trainer.global_step``."""
    return int(getattr(pl_module, "g_steps", trainer.global_step))


@functools.lru_cache(maxsize=1)
def _fid_monitor_class() -> Optional[type]:
    try:
        from lightning_regan.callbacks.fid_monitor import FIDMonitor
    except ImportError:
        return None
    return FIDMonitor


def find_fid_monitor(callbacks: Iterable[Callback]) -> Optional[Callback]:
    """The FID evaluation callback among ``callbacks``: an ``FIDMonitor``, else one with its attributes
    (``history``, ``eval_time_s``, ``last_fid``)."""
    callbacks = list(callbacks)
    fid_monitor_class = _fid_monitor_class()
    if fid_monitor_class is not None:
        for cb in callbacks:
            if isinstance(cb, fid_monitor_class):
                return cb
    for cb in callbacks:
        if isinstance(getattr(cb, "history", None), list) and hasattr(cb, "eval_time_s") and hasattr(cb, "last_fid"):
            return cb
    return None


def eval_generator_of(pl_module: L.LightningModule) -> Optional[torch.nn.Module]:
    """The generator used for evaluation (GANModule contract), else ``pl_module.generator``, else ``None``."""
    module = getattr(pl_module, "eval_generator", None)
    if module is None:
        module = getattr(pl_module, "generator", None)
    return module if isinstance(module, torch.nn.Module) else None


def _to_float(value: Any) -> float:
    if isinstance(value, Tensor):
        return float(value.detach().float().mean().item()) if value.numel() else math.nan
    return float(value)


class EarlyTermination(Callback):
    """Stop GAN training when the losses plateau, the FID plateaus, the samples collapse or training diverges.

    On every generator step (``pl_module.g_steps`` changed) the ``divergence`` and ``loss_plateau`` rules
    read ``trainer.callback_metrics``; on every new FID evaluation the ``fid_plateau`` and ``collapse`` rules read
    it (the FID, and the evaluation's ``val/fid_std`` / ``val/recall`` from ``trainer.callback_metrics``). New
    evaluations are taken from the ``FIDMonitor``'s ``history`` when one is in ``trainer.callbacks``
    (its ``history``, or ``kid_history`` for ``val/kid``; whichever order the callbacks run in), else from a
    change of the value of ``trainer.callback_metrics[fid_monitor]``.
    The local decision is reduced with ``trainer.strategy.reduce_boolean_decision(..., all=False)`` so every
    rank stops together when any rank's data triggers, and the reason is reduced with a max over
    :data:`~lightning_regan.stopping.REASON_CODES` (divergence > collapsed > FID plateau > loss plateau), so every rank
    records it. Sanity checks and ``fast_dev_run`` are skipped.

    The best FID seen (raw, not smoothed) and its G step are tracked in any case, with a CPU copy of
    ``pl_module.eval_generator``'s state at that step; with ``restore_best_generator`` it is loaded back
    into ``eval_generator`` (the EMA copy when EMA is on, else the generator) at the end of training.

    Checkpoints hold the rules' counters, the FID history, the best FID and the best generator copy. On
    resume the current constructor arguments win over the checkpoint's (a difference is warned about),
    and the stop decision itself is not restored: a resumed fit decides again.

    Args:
        loss_plateau: Loss plateau rule, or ``None``.
        fid_plateau: FID plateau rule (``FIDTrend``, ``FIDPlateau``, ``FIDNoisePlateau`` or ``FIDPowerLaw``), or ``None``.
        divergence: Divergence rule, or ``None``.
        collapse: Mode-collapse rule (reason ``collapsed``; reads ``val/recall``), or ``None``.
        tolerance: The user's knob: stop when going on is unlikely to improve the FID by more than this share
            (0.05 = 5 %); sets ``fid_plateau.tolerance``. ``None`` keeps the rule's own value.
        fid_monitor: Name of the logged FID metric.
        restore_best_generator: Load the best-FID generator back into the model when training ends.
        loss_plateau_only_without_fid: Apply ``loss_plateau`` only in runs that measure no FID during training
            (no FID monitor evaluating periodically, no FID logged yet): where an FID is measured, the FID rule
            decides. GAN losses settle long before the samples stop improving, so a loss plateau is a poor
            stop signal next to an FID (see ``docs/early_stopping.md``).
        verbose: Log the stop message (rank zero) and FID improvements.

    Attributes:
        status: ``"completed"`` (no stop by this callback), ``"stopped_early"`` or ``"diverged"``.
        stop_reason: A :class:`~lightning_regan.stopping.StopReason` or ``None``.
        stop_message: The message logged when stopping, ending "Signaling Trainer to stop.".
        stopped_g_step: G step of the stop, or ``None``.
        best_fid: Lowest FID seen, or ``None``; ``best_fid_step`` its G step.
        fid_history: ``[(g_step, fid), ...]`` of the evaluations seen.
        restored_best_generator: Whether the best generator was loaded back; ``restored_into`` says where.
    """

    def __init__(
        self,
        loss_plateau: Optional[LossPlateau] = None,
        fid_plateau: Optional[StopRule] = None,
        divergence: Optional[Divergence] = None,
        fid_monitor: str = "val/fid",
        restore_best_generator: bool = True,
        verbose: bool = True,
        loss_plateau_only_without_fid: bool = False,
        collapse: Optional[Collapse] = None,
        tolerance: Optional[float] = None,
    ) -> None:
        super().__init__()
        for name, value, classes in (
            ("loss_plateau", loss_plateau, (LossPlateau,)),
            ("fid_plateau", fid_plateau, FID_RULES),
            ("divergence", divergence, (Divergence,)),
            ("collapse", collapse, (Collapse,)),
        ):
            if value is not None and not isinstance(value, classes):
                names = " or ".join(f"lightning_regan.stopping.{c.__name__}" for c in classes)
                raise ValueError(f"EarlyTermination: {name} must be a {names} or None, got {type(value).__name__}.")
        if tolerance is not None:
            if not hasattr(fid_plateau, "tolerance"):
                raise ValueError(
                    "EarlyTermination: tolerance needs an fid_plateau rule with a tolerance (FIDTrend, FIDNoisePlateau, "
                    f"FIDPowerLaw), got {type(fid_plateau).__name__}."
                )
            if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 < tolerance < 1):
                raise ValueError(f"EarlyTermination: tolerance must be a number in (0, 1) (0.05 = 5 %), got {tolerance!r}.")
            fid_plateau.tolerance = float(tolerance)
        if collapse is not None and collapse.monitor != fid_monitor:
            raise ValueError(
                f"EarlyTermination: collapse.monitor ({collapse.monitor!r}) differs from fid_monitor ({fid_monitor!r})."
            )
        if not isinstance(fid_monitor, str) or not fid_monitor:
            raise ValueError(
                f"EarlyTermination: fid_monitor must be a metric name such as 'val/fid', got {fid_monitor!r}."
            )
        if fid_plateau is not None and fid_plateau.monitor != fid_monitor:
            raise ValueError(
                f"EarlyTermination: fid_plateau.monitor ({fid_plateau.monitor!r}) differs from fid_monitor "
                f"({fid_monitor!r}); give both the same metric name."
            )
        self.loss_plateau = loss_plateau
        self.fid_plateau = fid_plateau
        self.divergence = divergence
        self.collapse = collapse
        self.fid_monitor = fid_monitor
        self.restore_best_generator = bool(restore_best_generator)
        self.verbose = bool(verbose)
        self.loss_plateau_only_without_fid = bool(loss_plateau_only_without_fid)

        self.status = "completed"
        self.stop_reason: Optional[StopReason] = None
        self.stop_message: Optional[str] = None
        self.stopped_g_step: Optional[int] = None
        self.best_fid: Optional[float] = None
        self.best_fid_step: Optional[int] = None
        self.best_generator_state: Optional[dict[str, Tensor]] = None
        self.best_generator_step: Optional[int] = None
        self.fid_history: list[tuple[int, float]] = []
        self.restored_best_generator = False
        self.restored_into: Optional[str] = None
        #: Status recorded in the checkpoint this run resumed from (informative; not applied).
        self.resumed_status: Optional[str] = None

        self._last_g_step: Optional[int] = None
        self._last_fid_step: Optional[int] = None
        self._last_fid_value: Optional[float] = None
        self._pending: list[tuple[StopReason, str]] = []
        self._warned_missing = False
        self._fid_scheduled = False

    # ------------------------------------------------------------------ identity and state
    @property
    def rules(self) -> dict[str, StopRule]:
        """The configured rules by name."""
        named = {"loss_plateau": self.loss_plateau, "fid_plateau": self.fid_plateau, "divergence": self.divergence,
                 "collapse": self.collapse}
        return {name: rule for name, rule in named.items() if rule is not None}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(fid_monitor=self.fid_monitor)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rules": {name: rule.state_dict() for name, rule in self.rules.items()},
            "best_fid": self.best_fid,
            "best_fid_step": self.best_fid_step,
            "best_generator": self.best_generator_state,
            "best_generator_step": self.best_generator_step,
            "fid_history": [[g, f] for g, f in self.fid_history],
            "last_g_step": self._last_g_step,
            "last_fid_step": self._last_fid_step,
            "last_fid_value": self._last_fid_value,
            "status": self.status,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "stopped_g_step": self.stopped_g_step,
            "stop_message": self.stop_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_rules = state_dict.get("rules") or {}
        for name, rule in self.rules.items():
            if name in saved_rules:
                rule.load_state_dict(saved_rules[name])
        self.best_fid = state_dict.get("best_fid")
        self.best_fid_step = state_dict.get("best_fid_step")
        self.best_generator_state = state_dict.get("best_generator")
        self.best_generator_step = state_dict.get("best_generator_step")
        self.fid_history = [(int(g), float(f)) for g, f in state_dict.get("fid_history") or []]
        self._last_g_step = state_dict.get("last_g_step")
        self._last_fid_step = state_dict.get("last_fid_step")
        self._last_fid_value = state_dict.get("last_fid_value")
        self.resumed_status = state_dict.get("status")

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _skip(trainer: L.Trainer) -> bool:
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Each fit decides afresh; counters, FID history and the best generator carry over.
        self.status, self.stop_reason, self.stop_message, self.stopped_g_step = "completed", None, None, None
        self.restored_best_generator, self.restored_into = False, None
        self._pending.clear()
        monitor = find_fid_monitor(trainer.callbacks)
        self._fid_scheduled = monitor is not None and (getattr(monitor, "every_n_g_steps", 1) or 0) > 0
        if self.loss_plateau is not None and self.loss_plateau_only_without_fid and self.verbose \
                and trainer.is_global_zero:
            log.info("EarlyTermination: %s", "the FID decides; the loss-plateau rule is off in this run (an FID is "
                     "measured)." if self._fid_scheduled else "no FID is measured: the loss-plateau rule is on.")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Evaluations logged after our on_train_batch_end (FIDMonitor registered after us): the generator has
        # not moved since, so the best-FID copy is still exact; the decision is reduced at this batch's end.
        if not self._skip(trainer):
            self._ingest_fid(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._skip(trainer):
            return
        if self.stop_reason is not None:  # already decided (e.g. the Trainer keeps going until min_steps)
            trainer.should_stop = True
            return
        self._ingest_fid(trainer, pl_module)
        g_step = g_steps_of(trainer, pl_module)
        new_g_step = g_step != self._last_g_step
        # Both conditions are the same on every rank (same batches; FID is evaluated on all ranks), so the
        # collectives below are entered by all ranks together.
        if not new_g_step and not self._pending:
            return
        if new_g_step:
            self._last_g_step = g_step
            if g_step > 0:  # before the first G update (n_critic > 1) there is no G loss to read yet
                self._apply_step_rules(trainer, g_step)
        local = max(self._pending, key=lambda item: REASON_CODES[item[0]], default=None)
        self._pending.clear()
        should_stop = trainer.strategy.reduce_boolean_decision(local is not None, all=False)
        if not should_stop:
            return
        code = torch.tensor(REASON_CODES[local[0]] if local else 0, device=trainer.strategy.root_device)
        code = int(trainer.strategy.reduce(code, reduce_op="max").item())
        reason = CODE_REASONS.get(code) or (local[0] if local else StopReason.DIVERGENCE)
        if local is not None and local[0] is reason:
            message = local[1]
        else:
            message = f"Another process detected {reason.value} at G step {g_step}."
        self._stop(trainer, reason, message, g_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._skip(trainer):
            return
        self._ingest_fid(trainer, pl_module)  # a final evaluation logged after our last batch end
        self._pending.clear()
        target = eval_generator_of(pl_module)
        if self.restore_best_generator and self.best_generator_state is not None and target is not None:
            target.load_state_dict(self.best_generator_state)
            ema = getattr(pl_module, "ema_generator", None)
            is_ema = ema is not None and target is getattr(ema, "module", None)
            self.restored_into = "ema_generator" if is_ema else "generator"
            self.restored_best_generator = True
            if self.verbose and trainer.is_global_zero:
                log.info(
                    "EarlyTermination: restored the %s of the best %s = %.4g (G step %s).",
                    self.restored_into, self.fid_monitor, self.best_fid, self.best_generator_step,
                )

    # ------------------------------------------------------------------ internals
    def _stop(self, trainer: L.Trainer, reason: StopReason, message: str, g_step: int) -> None:
        self.stop_reason = reason
        self.stopped_g_step = g_step
        self.status = "diverged" if reason is StopReason.DIVERGENCE else "stopped_early"  # collapsed: stopped_early
        self.stop_message = f"{message} Signaling Trainer to stop."
        trainer.should_stop = True
        if self.verbose and trainer.is_global_zero:
            (log.warning if reason is StopReason.DIVERGENCE else log.info)(self.stop_message)

    def _read_metrics(self, trainer: L.Trainer, keys: Iterable[str]) -> dict[str, float]:
        available = trainer.callback_metrics
        keys = list(dict.fromkeys(keys))
        missing = [k for k in keys if k not in available]
        if missing and not self._warned_missing:
            self._warned_missing = True
            if trainer.is_global_zero:
                log.warning(
                    "EarlyTermination: %s not logged, so the rules reading them ignore them. Logged metrics: %s.",
                    ", ".join(missing), ", ".join(sorted(available)) or "none",
                )
        return {k: _to_float(available[k]) for k in keys if k in available}

    @property
    def loss_plateau_active(self) -> bool:
        """Whether the loss-plateau rule is applied in this run (see ``loss_plateau_only_without_fid``)."""
        if self.loss_plateau is None:
            return False
        fid_measured = self._fid_scheduled or bool(self.fid_history)
        return not (self.loss_plateau_only_without_fid and fid_measured)

    def _apply_step_rules(self, trainer: L.Trainer, g_step: int) -> None:
        loss_plateau = self.loss_plateau if self.loss_plateau_active else None
        step_rules: list[StopRule] = [r for r in (self.divergence, loss_plateau) if r is not None]
        if not step_rules:
            return
        keys: list[str] = []
        if self.divergence is not None:
            keys += self.divergence.keys
        if loss_plateau is not None:
            keys += loss_plateau.monitors
        metrics = self._read_metrics(trainer, keys)
        for rule in step_rules:
            stop, message = rule.update(g_step, metrics)
            if stop:
                self._pending.append((rule.reason, message))
            elif message:
                log.debug(message)

    def _new_fid_evaluations(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[tuple[int, float]]:
        monitor = find_fid_monitor(trainer.callbacks)
        history = getattr(monitor, _HISTORY_OF.get(self.fid_monitor, ""), None) if monitor is not None else None
        if isinstance(history, list):
            return [
                (int(g), float(f)) for g, f in history
                if self._last_fid_step is None or int(g) > self._last_fid_step
            ]
        value = trainer.callback_metrics.get(self.fid_monitor)
        if value is None:
            return []
        value = _to_float(value)
        last = self._last_fid_value
        if last is not None and (value == last or (math.isnan(value) and math.isnan(last))):
            return []  # the same logged value as before: no new evaluation
        self._last_fid_value = value
        return [(g_steps_of(trainer, pl_module), value)]

    def _ingest_fid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for g_step, fid in self._new_fid_evaluations(trainer, pl_module):
            self._last_fid_step = g_step
            self.fid_history.append((g_step, fid))
            if math.isfinite(fid) and (self.best_fid is None or fid < self.best_fid):
                self.best_fid, self.best_fid_step = fid, g_step
                # Only a copy taken at the evaluated step is that generator (history may hold older entries).
                generator = eval_generator_of(pl_module)
                if generator is not None and g_step == g_steps_of(trainer, pl_module):
                    self.best_generator_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()
                    }
                    self.best_generator_step = g_step
                if self.verbose and trainer.is_global_zero:
                    log.info("EarlyTermination: new best %s = %.4g at G step %d.", self.fid_monitor, fid, g_step)
            metrics = self._evaluation_metrics(trainer, pl_module, g_step, fid)
            for rule in (self.collapse, self.fid_plateau):
                if rule is None:
                    continue
                stop, message = rule.update(g_step, metrics)
                if stop:
                    self._pending.append((rule.reason, message))
                elif message:
                    log.debug(message)

    def _evaluation_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int,
                            fid: float) -> dict[str, float]:
        """The FID of an evaluation plus what the evaluation rules also read (noise, recall), taken from
        ``trainer.callback_metrics`` when the evaluation is the current G step's (older entries: FID only)."""
        metrics = {self.fid_monitor: fid}
        if g_step != g_steps_of(trainer, pl_module):
            return metrics
        keys = [k for rule in (self.fid_plateau, self.collapse) if rule is not None
                for k in getattr(rule, "keys", ()) if k != self.fid_monitor]
        available = trainer.callback_metrics
        metrics.update({k: _to_float(available[k]) for k in dict.fromkeys(keys) if k in available})
        return metrics

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly account of the configuration and the outcome (used by ``RunSummary``)."""
        return {
            "rules": {name: rule.config() for name, rule in self.rules.items()},
            "fid_monitor": self.fid_monitor,
            "loss_plateau_only_without_fid": self.loss_plateau_only_without_fid,
            "loss_plateau_active": self.loss_plateau_active,
            "status": self.status,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "stop_message": self.stop_message,
            "stopped_g_step": self.stopped_g_step,
            "best_fid": self.best_fid,
            "best_fid_step": self.best_fid_step,
            "restore_best_generator": self.restore_best_generator,
            "restored_best_generator": self.restored_best_generator,
            "restored_into": self.restored_into,
            "best_generator_step": self.best_generator_step if self.restored_best_generator else None,
        }


__all__ = ["EarlyTermination", "eval_generator_of", "find_fid_monitor", "g_steps_of"]

"""EarlyTermination: the decision callback that stops GAN training on a plateau or on divergence.

Evaluation lives elsewhere (``FIDMonitor`` logs ``val/fid`` and ``val/fid_g_step``); this callback reads only
``trainer.callback_metrics``, feeds the pure rules of :mod:`lightning_regan.stopping`, reduces the decision over
ranks and stops the Trainer. It also keeps the generator of the best FID and puts it back when training ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from lightning_regan.callbacks.g_step import GStepCallback, g_step_budget, g_steps_of
from lightning_regan.logged import NewEvaluations, to_float
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

STATE_VERSION = 2


class EarlyTermination(GStepCallback):
    """Stop GAN training when the losses plateau, the FID plateaus, the samples collapse or training diverges.

    On every G step the ``divergence`` and ``loss_plateau`` rules read ``trainer.callback_metrics``. Each new FID
    evaluation there (a new ``<fid_monitor>_g_step``, else a changed ``<fid_monitor>``) feeds the ``collapse`` and
    ``fid_plateau`` rules with the keys logged with it (``val/fid_std``, ``val/recall``), whichever order the
    callbacks run in. The decision is reduced over ranks (any rank stops all) and so is the reason, by priority
    (:data:`~lightning_regan.stopping.REASON_CODES`: divergence > collapsed > FID plateau > loss plateau). Sanity
    checks and ``fast_dev_run`` are skipped.

    The best FID (raw) and its G step are tracked, with an in-memory CPU copy of ``pl_module.eval_generator`` (the
    EMA copy when EMA is on) at that step, loaded back at the end with ``restore_best_generator``. The copy is not
    written into checkpoints (``ModelCheckpoint(monitor="val/fid")``'s best checkpoint holds it): after a resume
    whose best FID predates the resume, the generator is not restored.

    Checkpoints hold the rules' counters and the best FID, not the stop decision: a resumed fit decides again (with
    the current constructor arguments, not the checkpoint's).

    Args:
        loss_plateau: Loss plateau rule, or ``None``.
        fid_plateau: FID plateau rule (``FIDTrend``, ``FIDPlateau``, ``FIDNoisePlateau`` or ``FIDPowerLaw``), or
            ``None``.
        divergence: Divergence rule, or ``None``.
        collapse: Mode-collapse rule (reason ``collapsed``; reads ``val/recall``), or ``None``.
        tolerance: The user's knob: stop when going on is unlikely to improve the FID by more than this share
            (0.05 = 5 %); sets ``fid_plateau.tolerance``. ``None`` keeps the rule's own value.
        fid_monitor: Name of the logged FID metric.
        restore_best_generator: Load the best-FID generator back into the model when training ends.
        loss_plateau_only_without_fid: Apply ``loss_plateau`` only while no FID has been logged in the run: where an
            FID is measured, the FID rule decides. GAN losses settle long before the samples stop improving, so a
            loss plateau is a poor stop signal next to an FID (see ``docs/studies/early_stopping.md``).
        verbose: Log the stop message (rank zero) and FID improvements.

    Attributes:
        status: ``"completed"`` (no stop by this callback), ``"stopped_early"`` (also when collapsed) or
            ``"diverged"``.
        stop_reason: A :class:`~lightning_regan.stopping.StopReason` or ``None``.
        stop_message: The message logged when stopping, ending "Signaling Trainer to stop.".
        stopped_g_step: G step of the stop, or ``None``.
        best_fid: Lowest FID seen, or ``None``; ``best_fid_step`` its G step.
        smoothed_fid: ``[(g_step, smoothed FID), ...]`` that the FID plateau rule compared (for the FID plot; rules
            with a ``smoothed`` value only, i.e. ``FIDPlateau``).
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
        if not isinstance(fid_monitor, str) or not fid_monitor:
            raise ValueError(
                f"EarlyTermination: fid_monitor must be a metric name such as 'val/fid', got {fid_monitor!r}."
            )
        for name, rule in (("fid_plateau", fid_plateau), ("collapse", collapse)):
            if rule is not None and rule.monitor != fid_monitor:
                raise ValueError(
                    f"EarlyTermination: {name}.monitor ({rule.monitor!r}) differs from fid_monitor ({fid_monitor!r}); "
                    "give both the same metric name."
                )
        self.loss_plateau = loss_plateau
        self.fid_plateau = fid_plateau
        self.divergence = divergence
        self.collapse = collapse
        self.fid_monitor = fid_monitor
        self.restore_best_generator = bool(restore_best_generator)
        self.verbose = bool(verbose)
        self.loss_plateau_only_without_fid = bool(loss_plateau_only_without_fid)
        # Rules that project ahead and were given no budget get the Trainer's at each fit.
        self._budget_from_trainer = getattr(fid_plateau, "budget_g_steps", False) is None

        self.status = "completed"
        self.stop_reason: Optional[StopReason] = None
        self.stop_message: Optional[str] = None
        self.stopped_g_step: Optional[int] = None
        self.best_fid: Optional[float] = None
        self.best_fid_step: Optional[int] = None
        self.best_generator_step: Optional[int] = None
        self.smoothed_fid: list[tuple[int, float]] = []
        self.restored_best_generator = False
        self.restored_into: Optional[str] = None

        self._best_generator: Optional[dict[str, Tensor]] = None
        self._evaluations = NewEvaluations(fid_monitor, f"{fid_monitor}_g_step")
        self._fid_seen = False
        self._pending: list[tuple[StopReason, str]] = []
        self._warned_missing = False

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
            "smoothed_fid": [[g, f] for g, f in self.smoothed_fid],
            "last_fid_step": self._evaluations.last_step,
            "last_fid_value": self._evaluations.last_value,
            "fid_seen": self._fid_seen,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_rules = state_dict.get("rules") or {}
        for name, rule in self.rules.items():
            if name in saved_rules:
                rule.load_state_dict(saved_rules[name])
        self.best_fid = state_dict.get("best_fid")
        self.best_fid_step = state_dict.get("best_fid_step")
        self.smoothed_fid = [(int(g), float(f)) for g, f in state_dict.get("smoothed_fid") or []]
        self._evaluations.last_step = state_dict.get("last_fid_step")
        self._evaluations.last_value = state_dict.get("last_fid_value")
        self._fid_seen = bool(state_dict.get("fid_seen", self.best_fid is not None))

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _skip(trainer: L.Trainer) -> bool:
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Each fit decides afresh; the rules' counters and the best FID carry over.
        self.status, self.stop_reason, self.stop_message, self.stopped_g_step = "completed", None, None, None
        self.restored_best_generator, self.restored_into = False, None
        self._pending.clear()
        if self._budget_from_trainer:
            self.fid_plateau.budget_g_steps = g_step_budget(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Evaluations logged after our on_train_batch_end (an evaluation callback registered after us): the generator
        # has not moved since, so the best-FID copy is still exact; the decision is reduced at this batch's end.
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
        g_step_taken = getattr(pl_module, "g_step_taken", True)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # -> on_g_step: the step rules
        # Both conditions are the same on every rank (same batches; FID is evaluated on all ranks), so the
        # collectives in _decide are entered by all ranks together.
        if g_step_taken or self._pending:
            self._decide(trainer, g_steps_of(trainer, pl_module))

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        self._apply_step_rules(trainer, g_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._skip(trainer):
            return
        self._ingest_fid(trainer, pl_module)  # a final evaluation logged after our last batch end
        self._pending.clear()
        if not self.restore_best_generator or self.best_fid is None:
            return
        target = getattr(pl_module, "eval_generator", None)
        if self._best_generator is None or target is None:
            if self.verbose and trainer.is_global_zero:
                log.info("EarlyTermination: the best %s (G step %s) predates this fit; its generator is in the best "
                         "checkpoint, not restored.", self.fid_monitor, self.best_fid_step)
            return
        target.load_state_dict(self._best_generator)
        ema = getattr(pl_module, "ema_generator", None)
        self.restored_into = "ema_generator" if ema is not None and target is getattr(ema, "module", None) else "generator"
        self.restored_best_generator = True
        if self.verbose and trainer.is_global_zero:
            log.info("EarlyTermination: restored the %s of the best %s = %.4g (G step %s).",
                     self.restored_into, self.fid_monitor, self.best_fid, self.best_generator_step)

    # ------------------------------------------------------------------ internals
    def _decide(self, trainer: L.Trainer, g_step: int) -> None:
        local = max(self._pending, key=lambda item: REASON_CODES[item[0]], default=None)
        self._pending.clear()
        if not trainer.strategy.reduce_boolean_decision(local is not None, all=False):
            return
        code = torch.tensor(REASON_CODES[local[0]] if local else 0, device=trainer.strategy.root_device)
        code = int(trainer.strategy.reduce(code, reduce_op="max").item())
        reason = CODE_REASONS.get(code) or (local[0] if local else StopReason.DIVERGENCE)
        if local is not None and local[0] is reason:
            message = local[1]
        else:
            message = f"Another process detected {reason.value} at G step {g_step}."
        self._stop(trainer, reason, message, g_step)

    def _stop(self, trainer: L.Trainer, reason: StopReason, message: str, g_step: int) -> None:
        self.stop_reason = reason
        self.stopped_g_step = g_step
        self.status = "diverged" if reason is StopReason.DIVERGENCE else "stopped_early"  # collapsed: stopped_early
        self.stop_message = f"{message} Signaling Trainer to stop."
        trainer.should_stop = True
        if self.verbose and trainer.is_global_zero:
            (log.warning if reason is StopReason.DIVERGENCE else log.info)(self.stop_message)

    @property
    def loss_plateau_active(self) -> bool:
        """Whether the loss-plateau rule applies now (see ``loss_plateau_only_without_fid``)."""
        if self.loss_plateau is None:
            return False
        return not (self.loss_plateau_only_without_fid and self._fid_seen)

    def _apply_step_rules(self, trainer: L.Trainer, g_step: int) -> None:
        if g_step <= 0:  # before the first G update (n_critic > 1) there is no G loss to read yet
            return
        loss_plateau = self.loss_plateau if self.loss_plateau_active else None
        keys = [*(self.divergence.keys if self.divergence else ()), *(loss_plateau.monitors if loss_plateau else ())]
        if keys:
            self._update_rules(g_step, (self.divergence, loss_plateau), self._read(trainer, keys, warn=True))

    def _update_rules(self, g_step: int, rules: Iterable[Optional[StopRule]], metrics: dict[str, float]) -> None:
        for rule in rules:
            if rule is None:
                continue
            stop, message = rule.update(g_step, metrics)
            if stop:
                self._pending.append((rule.reason, message))
            elif message:
                log.debug(message)

    def _read(self, trainer: L.Trainer, keys: Iterable[str], warn: bool = False) -> dict[str, float]:
        """The logged ``keys`` that ``trainer.callback_metrics`` holds (with ``warn``, the missing ones are named once:
        the rules reading them do without)."""
        available = trainer.callback_metrics
        keys = list(dict.fromkeys(keys))
        missing = [k for k in keys if k not in available]
        if warn and missing and not self._warned_missing:
            self._warned_missing = True
            if trainer.is_global_zero:
                log.warning(
                    "EarlyTermination: %s not logged, so the rules reading them ignore them. Logged metrics: %s.",
                    ", ".join(missing), ", ".join(sorted(available)) or "none",
                )
        return {k: to_float(available[k]) for k in keys if k in available}

    def _ingest_fid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        new = self._evaluations.read(trainer.callback_metrics, g_steps_of(trainer, pl_module))
        if new is None:
            return
        g_step, fid = new
        if not self._fid_seen and self.loss_plateau is not None and self.loss_plateau_only_without_fid \
                and self.verbose and trainer.is_global_zero:
            log.info("EarlyTermination: an FID is measured, so the FID decides; the loss-plateau rule is off.")
        self._fid_seen = True
        if math.isfinite(fid) and (self.best_fid is None or fid < self.best_fid):
            self.best_fid, self.best_fid_step = fid, g_step
            # Only a copy taken at the evaluated step is that generator (an older copy is no longer the best).
            generator = getattr(pl_module, "eval_generator", None)
            self._best_generator, self.best_generator_step = None, None
            if generator is not None and g_step == g_steps_of(trainer, pl_module):
                self._best_generator = {k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()}
                self.best_generator_step = g_step
            if self.verbose and trainer.is_global_zero:
                log.info("EarlyTermination: new best %s = %.4g at G step %d.", self.fid_monitor, fid, g_step)
        # The evaluation rules get the FID and the other keys they read (noise, recall), logged with it.
        rules = (self.collapse, self.fid_plateau)
        metrics = self._read(trainer, [k for rule in rules if rule is not None for k in getattr(rule, "keys", ())])
        self._update_rules(g_step, rules, {**metrics, self.fid_monitor: fid})
        smoothed = getattr(self.fid_plateau, "smoothed", None)
        if smoothed is not None:
            self.smoothed_fid.append((g_step, float(smoothed)))

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly account of the configuration and the outcome."""
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

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The stop decision for ``summary.json`` (``status``/``stop_reason`` only when this callback stopped)."""
        fields: dict[str, Any] = {"early_termination": self.describe()}
        if self.stop_reason is not None:
            fields.update(status=self.status, stop_reason=self.stop_reason.value, stopped_g_step=self.stopped_g_step)
        if self.smoothed_fid:
            fields["fid_smoothed"] = [[g, f] for g, f in self.smoothed_fid]
        return fields


__all__ = ["EarlyTermination"]

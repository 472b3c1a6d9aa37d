"""EarlyTermination: the decision callback that runs a list of stop rules over the logged metrics.

Evaluation lives elsewhere (``FIDMonitor`` logs ``val/fid``, ``val/fid_g_step``, ...); this callback reads only
``trainer.callback_metrics``, feeds the per-run states of the rules of :mod:`lightning_regan.stopping`, reduces the
decision over ranks and stops the Trainer. Keeping the best generator is :class:`BestGenerator`'s job; the run's
``status`` is :class:`RunSummary`'s (this callback publishes a :class:`~lightning_regan.stopping.StopRecord`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import lightning as L
import torch

from lightning_regan.callbacks.g_step import DECISION, GStepCallback, g_step_budget, g_steps_of
from lightning_regan.logged import NewEvaluations, to_float
from lightning_regan.stopping import (
    CODE_REASONS,
    REASON_CODES,
    RuleState,
    StopReason,
    StopRecord,
    StopRule,
    rule_name,
)
from lightning_regan.validation import check_bool, check_fraction

log = logging.getLogger(__name__)

STATE_VERSION = 3
Rules = Union[Sequence[StopRule], Mapping[str, Optional[StopRule]]]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()  # PowerLaw -> power_law


def _named(rules: Rules) -> tuple[dict[str, StopRule], dict[str, str]]:
    """The rules by name: a mapping's keys (``None`` entries dropped), else the snake-case class names; and each
    rule's name in checkpoints (a list's rule of a renamed class keeps the name its old class gave it, e.g.
    ``Plateau`` in a list is ``plateau``, saved as ``fid_plateau``)."""
    stored: dict[str, str] = {}
    if isinstance(rules, Mapping):
        items = [(str(name), rule) for name, rule in rules.items() if rule is not None]
    elif isinstance(rules, Sequence) and not isinstance(rules, str):
        items, counts = [], {}
        for rule in rules:
            base = _snake(rule_name(rule))
            old = _snake(getattr(type(rule), "checkpoint_name", type(rule).__name__))
            counts[base] = counts.get(base, 0) + 1
            suffix = "" if counts[base] == 1 else f"_{counts[base]}"
            items.append((base + suffix, rule))
            stored[base + suffix] = old + suffix
    else:
        raise ValueError(f"EarlyTermination: rules must be a list or a mapping of stop rules, got {rules!r}.")
    for name, rule in items:
        if not isinstance(rule, StopRule):
            raise ValueError(f"EarlyTermination: rule {name!r} must be a lightning_regan.stopping.StopRule, got "
                             f"{type(rule).__name__}.")
        if rule.cadence not in ("evaluation", "step"):
            raise ValueError(f"EarlyTermination: rule {name!r} has cadence {rule.cadence!r}; "
                             "expected 'evaluation' or 'step'.")
        if not isinstance(rule.reason, StopReason):
            raise ValueError(f"EarlyTermination: rule {name!r} has reason {rule.reason!r}; expected a StopReason.")
    return dict(items), {name: stored.get(name, name) for name, _ in items}


class EarlyTermination(GStepCallback):
    """Stop GAN training when one of its stop rules says so: plateau, collapse, divergence, or a rule of your own.

    Each rule declares the metric it reads (``monitor``), its ``mode`` and its ``cadence``. On every G step the
    ``"step"`` rules (``Divergence``, ``LossPlateau``) read ``trainer.callback_metrics``. Each new evaluation of an
    ``"evaluation"`` rule's ``monitor`` (a new value of its ``step_key``, ``<monitor>_g_step`` by default, else a
    changed ``<monitor>``) feeds that rule
    with the keys logged with it (``val/fid_std``, ``val/recall``), whichever order the callbacks run in. The decision
    is reduced over ranks (any rank stops all) and so is the reason, by priority
    (:data:`~lightning_regan.stopping.REASON_CODES`: divergence > collapsed > plateau > loss plateau). Sanity
    checks and ``fast_dev_run`` are skipped.

    Rules are configuration and are never changed: the callback keeps one per-run state per rule
    (``rule.new_state()``), saved in checkpoints (the counters, not the stop decision: a resumed fit decides again,
    with the current rules, not the checkpoint's). Checkpoints name the rules' classes by their ``checkpoint_name``
    (a renamed rule's old name, e.g. ``FIDPlateau`` for :class:`~lightning_regan.stopping.Plateau`), so checkpoints
    written before the rename resume. A trend rule without ``budget_g_steps`` gets the Trainer's budget in
    its state at each fit, and :class:`~lightning_regan.stopping.Trend` learns whether the module starts from trained
    weights (``pl_module.initialized_from`` is not ``None``: a fine-tune, which needs no take-off).

    Args:
        rules: The stop rules, as a list (named by class, e.g. ``trend``) or a mapping name -> rule (``None`` entries
            are skipped: how a config switches a rule off).
        tolerance: The user's knob, shared by every rule that has a ``tolerance`` (the trend rules): stop when going
            on is unlikely to improve the metric by more than this share (0.05 = 5 %). ``None`` keeps each rule's.
        verbose: Log the stop message (rank zero).

    Attributes:
        stop_record: A :class:`~lightning_regan.stopping.StopRecord` when this callback stopped the run, else
            ``None`` (``RunSummary`` reads it; ``status`` and ``stop_reason`` are shortcuts to it).
        stop_reason: A :class:`~lightning_regan.stopping.StopReason` or ``None``.
        stop_message: The message logged when stopping, ending "Signaling Trainer to stop.".
        stopped_g_step: G step of the stop, or ``None``.
        states: The per-run :class:`~lightning_regan.stopping.RuleState` of each rule, by name.
        smoothed: ``{rule name: [(g_step, smoothed value), ...]}`` for rules whose state has a ``smoothed`` value
            (``Plateau``): what the rule compared (for the FID plot).
    """

    stage = DECISION

    def __init__(self, rules: Rules = (), tolerance: Optional[float] = None, verbose: bool = True) -> None:
        super().__init__()
        named, self._stored_names = _named(rules)
        if tolerance is not None:
            check_fraction("EarlyTermination", "tolerance", tolerance)
            tuned = [name for name, rule in named.items() if "tolerance" in rule.config()]
            if not tuned:
                raise ValueError(
                    "EarlyTermination: tolerance needs a rule with a tolerance (Trend, LogLinearTrend, NoisePlateau, "
                    f"PowerLaw), got {', '.join(rule_name(r) for r in named.values()) or 'no rules'}."
                )
            named = {name: rule.replace(tolerance=float(tolerance)) if name in tuned else rule
                     for name, rule in named.items()}
        self.rules: dict[str, StopRule] = named
        self.tolerance = None if tolerance is None else float(tolerance)
        self.verbose = check_bool("EarlyTermination", "verbose", verbose)

        self.states: dict[str, RuleState] = {name: rule.new_state() for name, rule in named.items()}
        self._evaluations: dict[str, NewEvaluations] = {}
        for name, rule in named.items():
            if rule.cadence != "evaluation":
                continue
            step_key = rule.step_key or f"{rule.monitor}_g_step"
            tracker = self._evaluations.setdefault(rule.monitor, NewEvaluations(rule.monitor, step_key))
            if tracker.step_key != step_key:
                raise ValueError(f"EarlyTermination: rule {name!r} reads the G step of {rule.monitor} from {step_key!r}, "
                                 f"another rule from {tracker.step_key!r}; give them the same step_key.")
        self.smoothed: dict[str, list[tuple[int, float]]] = {}
        self.stop_record: Optional[StopRecord] = None
        self.stop_reason: Optional[StopReason] = None
        self.stop_message: Optional[str] = None
        self.stopped_g_step: Optional[int] = None
        self._pending: list[tuple[StopReason, str]] = []
        self._warned_missing = False

    @property
    def status(self) -> str:
        """``"completed"`` (no stop by this callback), ``"stopped_early"`` (also when collapsed) or ``"diverged"``."""
        return "completed" if self.stop_record is None else self.stop_record.status

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        # Names as checkpoints store them: a renamed rule class keeps the key its old name gave.
        return self._generate_state_key(rules=tuple((self._stored_names[n], type(r).checkpoint_name, r.monitor, r.mode)
                                                    for n, r in self.rules.items()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rules": {name: state.state_dict() for name, state in self.states.items()},
            "evaluations": {m: [t.last_step, t.last_value] for m, t in self._evaluations.items()},
            "smoothed": {name: [[g, v] for g, v in rows] for name, rows in self.smoothed.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("rules") or {}
        # A list's rules saved under their old class names (fid_plateau) restore into the renamed classes (plateau).
        found = {name: key for name in self.states for key in (name, self._stored_names[name]) if key in saved}
        fresh = [name for name in self.states if name not in found]
        if fresh and saved:
            log.warning("EarlyTermination: the checkpoint holds no state of the rule(s) %s (it has %s); they start "
                        "afresh.", ", ".join(fresh), ", ".join(saved))
        for name, key in found.items():
            self.states[name].load_state_dict(saved[key])
        for monitor, (step, value) in (state_dict.get("evaluations") or {}).items():
            if monitor in self._evaluations:
                self._evaluations[monitor].last_step, self._evaluations[monitor].last_value = step, value
        current = {key: name for name, key in found.items()}
        self.smoothed = {current.get(name, name): [(int(g), float(v)) for g, v in rows]
                         for name, rows in (state_dict.get("smoothed") or {}).items()}

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _skip(trainer: L.Trainer) -> bool:
        return bool(trainer.sanity_checking or trainer.fast_dev_run)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Each fit decides afresh; the rules' counters carry over.
        self.stop_record, self.stop_reason, self.stop_message, self.stopped_g_step = None, None, None, None
        self._pending.clear()
        self.prepare_states(g_step_budget(trainer, pl_module), getattr(pl_module, "initialized_from", None))

    def prepare_states(self, budget_g_steps: Optional[int], initialized_from: Any = None) -> None:
        """Give the rules' states what a fit knows at its start: the budget in G steps (for trend rules without their
        own ``budget_g_steps``) and whether the module starts from trained weights (``initialized_from`` not
        ``None``: a fine-tune). Called by ``on_train_start``; a replay of logged curves calls it the same way."""
        for name, state in self.states.items():
            if hasattr(state, "budget_g_steps") and getattr(self.rules[name], "budget_g_steps", 0) is None:
                state.budget_g_steps = budget_g_steps
            if hasattr(state, "starts_trained"):
                state.starts_trained = initialized_from is not None

    def replay(
        self, evaluations: Iterable[tuple[int, Mapping[str, float]]], budget_g_steps: Optional[int],
        initialized_from: Any = None,
    ) -> Optional[tuple[int, str, StopReason, str]]:
        """Decide offline on logged evaluations, as a fit would: fresh rule states prepared for the budget and the
        start (:meth:`prepare_states`), the evaluation rules fed ``(g_step, metrics)`` in order.

        Returns:
            ``(g_step, rule name, reason, message)`` of the first stop, or ``None`` when no rule stops.
        """
        self.states = {name: rule.new_state() for name, rule in self.rules.items()}
        self.prepare_states(budget_g_steps, initialized_from)
        names = [name for name, rule in self.rules.items() if rule.cadence == "evaluation"]
        for g_step, metrics in evaluations:
            for name in names:
                stop, message = self.states[name].update(g_step, metrics)
                if stop:
                    return g_step, name, self.rules[name].reason, message
        return None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Evaluations logged after our on_train_batch_end (an evaluation callback registered after us); the decision
        # is reduced at this batch's end.
        if not self._skip(trainer):
            self._ingest_evaluations(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._skip(trainer):
            return
        if self.stop_reason is not None:  # already decided (e.g. the Trainer keeps going until min_steps)
            trainer.should_stop = True
            return
        self._ingest_evaluations(trainer, pl_module)
        g_step_taken = getattr(pl_module, "g_step_taken", True)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # -> on_g_step: the step rules
        # Both conditions are the same on every rank (same batches; evaluations run on all ranks), so the
        # collectives in _decide are entered by all ranks together.
        if g_step_taken or self._pending:
            self._decide(trainer, g_steps_of(trainer, pl_module))

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        if g_step <= 0:  # before the first G update (n_critic > 1) there is no G loss to read yet
            return
        step_rules = [name for name, rule in self.rules.items() if rule.cadence == "step"]
        if step_rules:
            keys = [k for name in step_rules for k in self.rules[name].keys]
            required = [k for name in step_rules for k in self.rules[name].required_keys]
            metrics = self._read(trainer, keys, warn_missing=required)
            self._update(step_rules, g_step, metrics)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._skip(trainer):
            self._ingest_evaluations(trainer, pl_module)  # a final evaluation logged after our last batch end
        self._pending.clear()

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
        self.stop_message = f"{message} Signaling Trainer to stop."
        status = "diverged" if reason is StopReason.DIVERGENCE else "stopped_early"  # collapsed: stopped_early
        self.stop_record = StopRecord(status, reason.value, g_step, type(self).__name__, self.stop_message)
        trainer.should_stop = True
        if self.verbose and trainer.is_global_zero:
            (log.warning if reason is StopReason.DIVERGENCE else log.info)(self.stop_message)

    def _update(self, names: Sequence[str], g_step: int, metrics: Mapping[str, float]) -> None:
        for name in names:
            stop, message = self.states[name].update(g_step, metrics)
            if stop:
                self._pending.append((self.rules[name].reason, message))
            elif message:
                log.debug(message)

    def _read(self, trainer: L.Trainer, keys: Sequence[str], warn_missing: Sequence[str] = ()) -> dict[str, float]:
        """The logged ``keys`` that ``trainer.callback_metrics`` holds (the missing ones of ``warn_missing`` are named
        once: the rules reading them do without)."""
        available = trainer.callback_metrics
        missing = [k for k in dict.fromkeys(warn_missing) if k not in available]
        if missing and not self._warned_missing:
            self._warned_missing = True
            if trainer.is_global_zero:
                log.warning(
                    "EarlyTermination: %s not logged, so the rules reading them ignore them. Logged metrics: %s.",
                    ", ".join(missing), ", ".join(sorted(available)) or "none",
                )
        return {k: to_float(available[k]) for k in dict.fromkeys(keys) if k in available}

    def _ingest_evaluations(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for monitor, tracker in self._evaluations.items():
            new = tracker.read(trainer.callback_metrics, g_steps_of(trainer, pl_module))
            if new is None:
                continue
            g_step, value = new
            names = [n for n, r in self.rules.items() if r.cadence == "evaluation" and r.monitor == monitor]
            # The evaluation rules get the value and the other keys they read (noise, recall), logged with it.
            metrics = self._read(trainer, [k for n in names for k in self.rules[n].keys])
            self._update(names, g_step, {**metrics, monitor: value})
            for name in names:
                smoothed = getattr(self.states[name], "smoothed", None)
                if smoothed is not None:
                    self.smoothed.setdefault(name, []).append((g_step, float(smoothed)))

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly account of the configuration and the outcome."""
        return {
            "rules": {name: {"class": rule_name(rule), **rule.config()} for name, rule in self.rules.items()},
            "tolerance": self.tolerance,
            "status": self.status,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "stop_message": self.stop_message,
            "stopped_g_step": self.stopped_g_step,
            "projection": self._last_projection(),
        }

    def _last_projection(self) -> Optional[dict[str, Any]]:
        """The last projection of the first rule that projects (``Trend``): the line it fitted, where it followed it
        to and the best it had to beat by ``tolerance``; ``None`` before it judged."""
        for name, state in self.states.items():
            projection = getattr(state, "last_projection", None)
            if projection is not None:
                rule = self.rules[name]
                return {"rule": name, "monitor": rule.monitor, "tolerance": getattr(rule, "tolerance", None),
                        **projection}
        return None

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """This callback's part of ``summary.json`` (the run's ``status`` is ``RunSummary``'s, from ``stop_record``)."""
        fields: dict[str, Any] = {"early_termination": self.describe()}
        smoothed = next(iter(self.smoothed.values()), None)
        if smoothed:
            fields["fid_smoothed"] = [[g, f] for g, f in smoothed]
        return fields


__all__ = ["EarlyTermination"]

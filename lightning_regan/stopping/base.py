"""What every stop rule shares: the reasons, the rule (configuration) and its per-run state, the stop record.

A :class:`StopRule` holds configuration only and is never changed after construction; :meth:`StopRule.new_state`
creates the :class:`RuleState` that a run feeds (``update(g_step, metrics)``) and checkpoints (``state_dict``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Optional, Union


class StopReason(str, Enum):
    """Why training ended; the value is what ``summary.json`` records as ``stop_reason``.

    ``FID_PLATEAU`` is a deprecated alias of ``PLATEAU`` (the same member), and ``StopReason("fid_plateau")``, the
    value older runs recorded, reads as ``PLATEAU``.
    """

    MAX_STEPS = "max_steps"
    LOSS_PLATEAU = "loss_plateau"
    PLATEAU = "plateau"
    COLLAPSED = "collapsed"
    DIVERGENCE = "divergence"
    FID_PLATEAU = "plateau"  # deprecated alias of PLATEAU

    @classmethod
    def _missing_(cls, value: object) -> Optional["StopReason"]:
        return cls(LEGACY_REASONS[value]) if isinstance(value, str) and value in LEGACY_REASONS else None


#: Stop reasons older runs recorded -> today's word (``summary.json`` files and study records keep the old one).
LEGACY_REASONS: dict[str, str] = {"fid_plateau": "plateau"}


def normalize_reason(reason: Any) -> Any:
    """Today's word for a stop reason read from a ``summary.json`` or a record (``"fid_plateau"`` reads as
    ``"plateau"``); anything else is returned as it is."""
    value = reason.value if isinstance(reason, Enum) else reason
    return LEGACY_REASONS.get(value, value) if isinstance(value, str) else reason


# Precedence when several ranks or rules want to stop at once: the largest code wins. The codes are reduced across
# ranks: never renumber them.
REASON_CODES: dict[Optional[StopReason], int] = {
    None: 0,
    StopReason.LOSS_PLATEAU: 1,
    StopReason.PLATEAU: 2,
    StopReason.COLLAPSED: 3,
    StopReason.DIVERGENCE: 4,
}
CODE_REASONS: dict[int, Optional[StopReason]] = {code: reason for reason, code in REASON_CODES.items()}

#: When two callbacks stopped the run at the same G step, the status with the higher rank is the run's.
STATUS_RANKS: dict[str, int] = {"stopped_early": 1, "pruned": 2, "diverged": 3}


@dataclass(frozen=True)
class StopRecord:
    """A decider's account of why it stopped the run (``RunSummary`` turns the records into the run's ``status``).

    Attributes:
        status: ``"stopped_early"``, ``"diverged"`` or ``"pruned"`` (a key of :data:`STATUS_RANKS`).
        reason: ``summary.json``'s ``stop_reason`` (e.g. ``"plateau"``, ``"divergence"``, ``"pruned"``).
        g_step: G step of the stop.
        source: Name of the deciding callback.
        message: The stop message.
    """

    status: str
    reason: str
    g_step: int
    source: str
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUS_RANKS:
            raise ValueError(f"StopRecord: status must be one of {sorted(STATUS_RANKS)}, got {self.status!r}.")


def first_stop(records: Sequence[StopRecord]) -> Optional[StopRecord]:
    """The record that ended the run: the earliest G step; at the same step the higher status rank, then the reason
    and the source by name (never the order the callbacks were registered in)."""
    return min(records, key=lambda r: (r.g_step, -STATUS_RANKS[r.status], r.reason, r.source), default=None)


MODES = ("min", "max")


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_keys(owner: str, name: str, value: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Metric name(s) as a non-empty tuple of non-empty strings, else a ``ValueError``."""
    keys = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Sequence) else ()
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"{owner}: {name} must be a non-empty list of metric names, got {value!r}.")
    return keys


def check_mode(owner: str, mode: Any, allowed: Sequence[str] = MODES) -> str:
    """``"min"`` (lower is better) or ``"max"``, else a ``ValueError``."""
    if mode not in allowed:
        raise ValueError(f"{owner}: mode must be one of {', '.join(map(repr, allowed))}, got {mode!r}.")
    return mode


def _normalize(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


class StopRule:
    """Base class of a stop rule: the configuration of a pure stop criterion, never changed after construction.

    A subclass sets ``reason``, ``cadence`` and ``state_class``, sets ``monitor`` (the metric it decides on) and
    ``mode`` in its constructor, and keeps each constructor argument (checked) in the attribute of the same name,
    which is where :meth:`config` reads it back.

    Attributes:
        reason: The reason reported when the rule stops training.
        checkpoint_name: The class's name in checkpoints (``EarlyTermination.state_key`` and the names of rules given
            as a list): the class name, set for each subclass, except where a renamed rule keeps its old name so that
            checkpoints written before the rename resume.
        cadence: ``"evaluation"``: fed once per new evaluation of ``monitor`` (with the other ``keys`` logged with
            it); ``"step"``: fed every G step with ``keys``.
        monitor: The metric the rule decides on.
        mode: ``"min"`` (lower is better) or ``"max"``.
        step_key: The logged G step of each evaluation of ``monitor`` (a new value is a new evaluation, also when the
            value repeats); ``None``: ``<monitor>_g_step``. Without it logged, a changed value is a new evaluation.
    """

    reason: ClassVar[StopReason] = StopReason.PLATEAU
    cadence: ClassVar[str] = "evaluation"
    state_class: ClassVar[type["RuleState"]]
    checkpoint_name: ClassVar[str] = "StopRule"
    monitor: str
    mode: str = "min"
    step_key: Optional[str] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "checkpoint_name" not in cls.__dict__:
            cls.checkpoint_name = cls.__name__

    @property
    def keys(self) -> tuple[str, ...]:
        """Every metric name the rule reads."""
        return (self.monitor,)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """The keys whose absence from the logged metrics is worth a warning."""
        return self.keys

    def config(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes of the same names (the configuration, never
        restored from a checkpoint)."""
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        return {name: _normalize(getattr(self, name)) for name in names}

    def replace(self, **changes: Any) -> "StopRule":
        """A new rule of the same class with some constructor arguments changed (this one is left as it is)."""
        return type(self)(**{**self.config(), **changes})

    def new_state(self) -> "RuleState":
        """Fresh per-run state of this rule."""
        return self.state_class(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def rule_name(rule: Union[StopRule, type[StopRule]]) -> str:
    """The class name of a rule (or rule class); for a deprecated alias, the name of the class it stands for."""
    cls = rule if isinstance(rule, type) else type(rule)
    return cls.__dict__.get("alias_of", cls).__name__


def deprecated_alias(new: type[StopRule], old_name: str) -> type[StopRule]:
    """A subclass of ``new`` named ``old_name``, for code and configs written before a rename: the same arguments,
    decisions, messages and checkpoint name as ``new``; constructing it warns once (``DeprecationWarning``)."""

    @functools.wraps(new.__init__)  # config() reads the constructor's signature
    def __init__(self: StopRule, *args: Any, **kwargs: Any) -> None:
        warnings.warn(f"{old_name} is deprecated: use {new.__module__.rsplit('.', 1)[0]}.{new.__name__} (the same "
                      "arguments and decisions).", DeprecationWarning, stacklevel=2)
        new.__init__(self, *args, **kwargs)

    def replace(self: StopRule, **changes: Any) -> StopRule:
        return new(**{**self.config(), **changes})  # the new class: no second warning

    doc = f"Deprecated alias of :class:`{new.__name__}` (its old name): the same rule; constructing it warns."
    return type(old_name, (new,), {"__init__": __init__, "replace": replace, "__doc__": doc,
                                   "__module__": new.__module__, "alias_of": new})


class RuleState:
    """Per-run state of a :class:`StopRule`: fed ``update(g_step, metrics)``, checkpointed with ``state_dict``.

    A subclass names its counters and history in ``fields``: they are what ``state_dict`` saves and
    ``load_state_dict`` restores (a field a checkpoint lacks keeps its fresh value).

    ``load_state_dict`` restores counters and history only: the rule's configuration always wins over what a
    checkpoint recorded (a difference is reported with a warning), so a resumed run takes the same decision at the
    same G step with the same configuration.
    """

    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule

    def update(self, g_step: int, metrics: Mapping[str, float]) -> tuple[bool, str]:
        """Feed the metrics of one G step (or one evaluation); return ``(should_stop, message)``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Counters and history as a plain dict (plus the configuration, for comparison on load)."""
        return {"config": self.rule.config(), **copy.deepcopy({name: getattr(self, name) for name in self.fields})}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore counters and history; the rule's configuration is kept (a change is warned about)."""
        saved = state_dict.get("config") or {}
        changed = {k: (saved[k], v) for k, v in self.rule.config().items()
                   if k in saved and _normalize(saved[k]) != _normalize(v)}
        if changed:
            text = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            warnings.warn(
                f"{type(self.rule).__name__}: the configuration differs from the checkpoint ({text}); "
                "using the current configuration with the restored counters.",
                UserWarning,
                stacklevel=2,
            )
        for name in self.fields:
            if name in state_dict:
                setattr(self, name, copy.deepcopy(state_dict[name]))


__all__ = ["CODE_REASONS", "LEGACY_REASONS", "MODES", "REASON_CODES", "STATUS_RANKS", "RuleState", "StopReason",
           "StopRecord", "StopRule", "check_keys", "check_mode", "deprecated_alias", "first_stop", "is_finite",
           "normalize_reason", "rule_name"]

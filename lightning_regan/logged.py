"""Logged metrics read back as numbers, without Lightning: what the decision callbacks (``EarlyTermination``,
``OptunaPruning``) and ``RunSummary`` see of ``trainer.callback_metrics``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import torch


def to_float(value: Any) -> float:
    """A logged metric (tensor or number) as a float (NaN for an empty tensor)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else math.nan
    return float(value)


class NewEvaluations:
    """Tells a new evaluation of ``monitor`` in ``trainer.callback_metrics`` from one already seen.

    A new value of ``step_key`` (the G step the evaluation was measured at, logged with it) is a new evaluation, also
    when the value repeats (a stalled generator); without ``step_key`` logged, a changed value is one, measured now.
    ``last_step`` and ``last_value`` are what a decision callback keeps in its checkpoint state.
    """

    def __init__(self, monitor: str, step_key: str) -> None:
        self.monitor = monitor
        self.step_key = step_key
        self.last_step: Optional[float] = None
        self.last_value: Optional[float] = None

    def read(self, metrics: Mapping[str, Any], g_step: int) -> Optional[tuple[int, float]]:
        """``(G step it was measured at, value)`` of an evaluation not seen yet, else ``None``."""
        if self.monitor not in metrics:
            return None
        value = to_float(metrics[self.monitor])
        if self.step_key in metrics:
            step = to_float(metrics[self.step_key])
            if step == self.last_step:
                return None
            self.last_step = step
            return int(step), value
        last = self.last_value
        if last is not None and (value == last or (math.isnan(value) and math.isnan(last))):
            return None
        self.last_value = value
        return g_step, value


__all__ = ["NewEvaluations", "to_float"]

"""Lightning callbacks. Data flow: the G-step event (``g_step.py``) -> evaluation (FID, mode coverage, D overfitting) publishes
metrics -> decision (early termination; a sweep's ``OptunaPruning``, which lives with the sweep in
``lightning_regan.sweep.pruning``) reads them -> outputs (samples, summary, progress bar)."""

from typing import Any

from lightning_regan.callbacks.best_generator import BestGenerator
from lightning_regan.callbacks.early_termination import EarlyTermination
from lightning_regan.callbacks.fid_monitor import CLASS_ACCURACY_KEY, FID_KEY, FID_STEP_KEY, KID_KEY, FIDMonitor
from lightning_regan.callbacks.g_step import GStepCallback, g_steps_of, publish_metrics
from lightning_regan.callbacks.mode_coverage import ModeCoverageMonitor
from lightning_regan.callbacks.overfitting import OverfittingMonitor
from lightning_regan.callbacks.progress import GStepProgressBar
from lightning_regan.callbacks.random_streams import RandomStreams
from lightning_regan.callbacks.run_summary import RunSummary, StopDecider, SummaryFields
from lightning_regan.callbacks.samples import SampleGrid


__all__ = [
    "BestGenerator", "CLASS_ACCURACY_KEY", "FID_KEY", "FID_STEP_KEY", "KID_KEY", "EarlyTermination", "FIDMonitor", "GStepCallback",
    "GStepProgressBar", "ModeCoverageMonitor", "OptunaPruning", "OverfittingMonitor", "RandomStreams", "RunSummary", "SampleGrid",
    "StopDecider", "SummaryFields", "g_steps_of", "publish_metrics",
]


def __getattr__(name: str) -> Any:
    if name == "OptunaPruning":  # imported on first use: it lives with the sweep and imports g_step from here
        from lightning_regan.sweep.pruning import OptunaPruning

        return OptunaPruning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

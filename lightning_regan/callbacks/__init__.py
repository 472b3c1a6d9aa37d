"""Lightning callbacks: evaluation (FID, mode coverage), decision (early termination), outputs (samples, summary,
progress bar)."""

from lightning_regan.callbacks.early_termination import EarlyTermination
from lightning_regan.callbacks.fid_monitor import FID_KEY, KID_KEY, FIDMonitor
from lightning_regan.callbacks.mode_coverage import ModeCoverageMonitor
from lightning_regan.callbacks.optuna_pruning import OptunaPruning
from lightning_regan.callbacks.progress import GStepProgressBar
from lightning_regan.callbacks.run_summary import RunSummary
from lightning_regan.callbacks.samples import SampleGrid

__all__ = [
    "FID_KEY", "KID_KEY", "EarlyTermination", "FIDMonitor", "GStepProgressBar", "ModeCoverageMonitor", "RunSummary",
    "SampleGrid", "OptunaPruning",
]

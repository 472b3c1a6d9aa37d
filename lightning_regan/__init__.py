"""lightning-regan: PyTorch Lightning GANs with regularized discriminators that know when to stop."""

from lightning_regan import callbacks, data, losses, models, regularizers, stopping
from lightning_regan.callbacks import EarlyTermination, FIDMonitor, ModeCoverageMonitor, RunSummary, SampleGrid
from lightning_regan.module import GANModule, max_steps_for
from lightning_regan.stopping import Collapse, Divergence, FIDPlateau, FIDTrend, LossPlateau, StopReason

__version__ = "0.1.0"

__all__ = [
    "Collapse",
    "Divergence",
    "EarlyTermination",
    "FIDMonitor",
    "FIDPlateau",
    "FIDTrend",
    "GANModule",
    "LossPlateau",
    "ModeCoverageMonitor",
    "RunSummary",
    "SampleGrid",
    "StopReason",
    "__version__",
    "callbacks",
    "data",
    "losses",
    "max_steps_for",
    "models",
    "regularizers",
    "stopping",
]

"""lightning-regan: PyTorch Lightning GANs with regularized discriminators that know when to stop.

The public names are imported on first use (module ``__getattr__``), so ``import lightning_regan`` and the command
line tools' config checks do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_LAZY = {
    "AtomicCheckpointIO": "lightning_regan.checkpoint_io",
    "BestGenerator": "lightning_regan.callbacks",
    "EarlyTermination": "lightning_regan.callbacks",
    "FIDMonitor": "lightning_regan.callbacks",
    "ModeCoverageMonitor": "lightning_regan.callbacks",
    "OverfittingMonitor": "lightning_regan.callbacks",
    "RunSummary": "lightning_regan.callbacks",
    "SampleGrid": "lightning_regan.callbacks",
    "GANModule": "lightning_regan.module",
    "max_steps_for": "lightning_regan.steps",
    "Collapse": "lightning_regan.stopping",
    "Divergence": "lightning_regan.stopping",
    "LogLinearTrend": "lightning_regan.stopping",
    "NoisePlateau": "lightning_regan.stopping",
    "Plateau": "lightning_regan.stopping",
    "PowerLaw": "lightning_regan.stopping",
    "Trend": "lightning_regan.stopping",
    "LossPlateau": "lightning_regan.stopping",
    # Deprecated aliases (the names before the rules became metric-neutral).
    "FIDNoisePlateau": "lightning_regan.stopping",
    "FIDPlateau": "lightning_regan.stopping",
    "FIDPowerLaw": "lightning_regan.stopping",
    "FIDTrend": "lightning_regan.stopping",
    "RuleState": "lightning_regan.stopping",
    "StopReason": "lightning_regan.stopping",
    "StopRule": "lightning_regan.stopping",
}
_SUBMODULES = ("callbacks", "data", "losses", "models", "regularizers", "stopping")

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

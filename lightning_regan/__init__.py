"""lightning-regan: PyTorch Lightning GANs with regularized discriminators that know when to stop."""

from lightning_regan import losses, regularizers
from lightning_regan.module import GANModule, max_steps_for

__version__ = "0.1.0"

__all__ = ["GANModule", "__version__", "losses", "max_steps_for", "regularizers"]

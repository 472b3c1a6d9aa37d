"""What the callbacks read from the module they are attached to: one declared interface.

:class:`~lightning_regan.GANModule` satisfies :class:`GANModuleLike`; so can a user's own ``LightningModule``, which
then works with ``FIDMonitor``, ``EarlyTermination``, ``SampleGrid`` and the other callbacks (a test trains one).
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class GANModuleLike(Protocol):
    """The attributes and methods lightning_regan's callbacks use, beyond ``LightningModule``'s own."""

    g_steps: int  #: generator updates so far: the callbacks' clock (Lightning's global_step counts every step)
    d_steps: int  #: discriminator updates so far (one per batch): the loggers' step
    n_critic: int  #: D steps per G step: turns Lightning's max_steps into a G-step budget
    g_step_taken: bool  #: whether the last training batch took a G step (the G-step event fires then)
    ema_generator: Optional[nn.Module]  #: an averaged copy of G or None; restored with the best generator
    num_classes: Optional[int]  #: classes of a class-conditional module, None when unconditional
    label_probs: Optional[Tensor]  #: class frequencies of sample_labels, None for uniform
    fixed_noise_seed: int  #: seed of fixed_noise and of the per-class sample grids

    @property
    def device(self) -> torch.device:
        """Where samples are drawn and generated."""

    @property
    def eval_generator(self) -> nn.Module:
        """The generator that is evaluated, sampled and kept when best (e.g. the EMA copy)."""

    @property
    def conditional(self) -> bool:
        """Whether the generator takes class labels."""

    @property
    def fixed_noise(self) -> Tensor:
        """Latent vectors drawn once, for sample grids."""

    def sample_noise(self, n: int) -> Tensor:
        """``n`` latent vectors of the prior, on :attr:`device`."""

    def sample_labels(self, n: int) -> Tensor:
        """``n`` class labels for generated samples (conditional modules)."""

    def generate(self, n: Optional[int] = None, z: Optional[Tensor] = None, y: Optional[Tensor] = None) -> Tensor:
        """Eval-mode samples of :attr:`eval_generator` from ``z`` (with labels ``y`` when conditional)."""


__all__ = ["GANModuleLike"]

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
    """The attributes and methods lightning_regan's callbacks use, beyond ``LightningModule``'s own.

    Attributes:
        g_steps: Generator updates so far (the callbacks' clock; Lightning's ``global_step`` counts every
            optimizer step).
        d_steps: Discriminator updates so far (one per training batch; sets the loggers' step).
        n_critic: D steps per G step (converts Lightning's ``max_steps`` into a G-step budget).
        g_step_taken: Whether the last training batch took a G step (the G-step event fires then).
        ema_generator: An averaged copy of G (``AveragedModel``) or ``None``; its weights are restored with the best.
        num_classes: Number of classes of a class-conditional module, ``None`` when unconditional.
        label_probs: Class frequencies that :meth:`sample_labels` draws from, ``None`` for uniform.
        fixed_noise_seed: Seed of :attr:`fixed_noise` and of the per-class sample grids.
    """

    g_steps: int
    d_steps: int
    n_critic: int
    g_step_taken: bool
    ema_generator: Optional[nn.Module]
    num_classes: Optional[int]
    label_probs: Optional[Tensor]
    fixed_noise_seed: int

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

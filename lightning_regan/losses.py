"""Adversarial losses: pure functions of the discriminator's logits.

Each loss maps D's raw outputs (logits, or critic values for Wasserstein) to a scalar. They never call
backward; :class:`~lightning_regan.GANModule` does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class AdversarialLoss(nn.Module):
    """Base class: ``d_loss(d_real, d_fake)`` for the discriminator, ``g_loss(d_fake)`` for the generator."""

    name: str = "adversarial"

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        """Discriminator loss from logits on real and generated samples."""
        raise NotImplementedError

    def g_loss(self, d_fake: Tensor) -> Tensor:
        """Generator loss from the discriminator's logits on generated samples."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.name


class MinimaxLoss(AdversarialLoss):
    """The original saturating GAN game (Goodfellow et al. 2014).

    D maximizes ``log D(x) + log(1 - D(G(z)))``; G minimizes ``log(1 - D(G(z)))`` = ``-softplus(d_fake)``.
    """

    name = "minimax"

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -F.softplus(d_fake).mean()


class NonSaturatingLoss(MinimaxLoss):
    """Minimax D loss; G maximizes ``log D(G(z))`` instead (non-saturating logistic loss)."""

    name = "non_saturating"

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean()


class HingeLoss(AdversarialLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""

    name = "hinge"

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


class WassersteinLoss(AdversarialLoss):
    """Wasserstein critic loss (Arjovsky et al. 2017); pair it with WGAN-GP or weight constraints."""

    name = "wasserstein"

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


class LeastSquaresLoss(AdversarialLoss):
    """Least-squares GAN (Mao et al. 2017) with targets real=1, fake=0."""

    name = "least_squares"

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return 0.5 * ((d_real - 1.0).square().mean() + d_fake.square().mean())

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return 0.5 * (d_fake - 1.0).square().mean()


LOSSES: dict[str, type[AdversarialLoss]] = {
    cls.name: cls
    for cls in (MinimaxLoss, NonSaturatingLoss, HingeLoss, WassersteinLoss, LeastSquaresLoss)
}


def get_loss(loss: str | AdversarialLoss) -> AdversarialLoss:
    """Return an adversarial loss from its name (see ``LOSSES``) or pass an instance through.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything that is neither a name nor an ``AdversarialLoss``.
    """
    if isinstance(loss, AdversarialLoss):
        return loss
    if isinstance(loss, str):
        key = loss.lower().replace("-", "_")
        if key not in LOSSES:
            raise ValueError(f"Unknown adversarial loss {loss!r}; choose one of {sorted(LOSSES)}.")
        return LOSSES[key]()
    raise TypeError(
        f"loss must be a name or an AdversarialLoss instance, got {type(loss).__name__}."
    )


__all__ = [
    "AdversarialLoss",
    "HingeLoss",
    "LOSSES",
    "LeastSquaresLoss",
    "MinimaxLoss",
    "NonSaturatingLoss",
    "WassersteinLoss",
    "get_loss",
]

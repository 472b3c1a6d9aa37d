"""Class conditioning shared by the built-in networks: a label embedding joined to ``z`` in G, a projection head in D.

The projection discriminator (Miyato & Koyama, ICLR 2018) scores ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``:
an unconditional output plus the inner product of a class embedding with D's last features.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lightning_regan.validation import check_int


def check_num_classes(num_classes: Optional[int], who: str) -> Optional[int]:
    """``num_classes`` if it is ``None`` or an integer >= 2, else a clear error."""
    return check_int(who, "num_classes (None: unconditional)", num_classes, 2, optional=True)


class LabelEmbedding(nn.Module):
    """``(z, y) -> cat(z, embed(y))``: the generator's input for class ``y``.

    Args:
        num_classes: Number of classes.
        dim: Size of the class embedding.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.cat([z, self.embed(y).to(z.dtype)], dim=1)


class ProjectionHead(nn.Module):
    """The class term of a projection discriminator: ``<embed(y), h>`` for features ``h (N, F)``.

    Args:
        num_classes: Number of classes.
        features: Size of ``h``.
    """

    def __init__(self, num_classes: int, features: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, features)
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        return (self.embed(y).to(h.dtype) * h).sum(dim=1)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm2d whose scale and shift are looked up per class (class-conditional BatchNorm, de Vries et al. 2017),
    as in the generator of Miyato & Koyama (2018): ``gamma[y] * BN(x) + beta[y]``.

    Args:
        num_features: Channels of ``x``.
        num_classes: Number of classes.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)  # starts as the plain BatchNorm2d's identity affine map
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.bn(x)
        return self.gamma(y).to(h.dtype)[:, :, None, None] * h + self.beta(y).to(h.dtype)[:, :, None, None]


def projected_logits(layers: nn.Sequential, projection: ProjectionHead, x: Tensor, y: Tensor) -> Tensor:
    """``layers`` whose last module is the output ``Linear(F, 1)``: its logit plus the projection of the features
    that feed it, ``(N,)``."""
    h = x
    last = len(layers) - 1
    for i, layer in enumerate(layers):  # not layers[:-1]: slicing builds a new Sequential per call
        if i == last:
            return layer(h).squeeze(1) + projection(h, y)
        h = layer(h)
    raise ValueError("projected_logits: layers is empty.")


def need_labels(y: Optional[Tensor], conditional: bool, who: str) -> None:
    """Clear errors for labels given to an unconditional network, or missing for a conditional one."""
    if conditional and y is None:
        raise ValueError(f"{who} is class-conditional (num_classes set): call it with labels, {who}(input, y).")
    if not conditional and y is not None:
        raise ValueError(f"{who} is unconditional: build it with num_classes=... to pass labels.")


__all__ = ["ConditionalBatchNorm2d", "LabelEmbedding", "ProjectionHead", "check_num_classes", "need_labels", "projected_logits"]

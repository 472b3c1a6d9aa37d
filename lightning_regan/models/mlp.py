"""Fully connected generator and discriminator for 2-D points and small images."""

from __future__ import annotations

import math
from collections.abc import Sequence

from typing import Optional

import torch
from torch import Tensor, nn

from lightning_regan.models.conditioning import ProjectionHead, check_num_classes, need_labels, projected_logits
from lightning_regan.validation import check_int

_OUTPUT_ACTIVATIONS = ("auto", "tanh", "sigmoid", "none")
_NORMS = ("none", "layer", "batch")


def _shape(data_shape: Sequence[int], who: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in data_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{who}: data_shape must be a non-empty sequence of positive sizes, e.g. (2,) or (1, 8, 8); got {data_shape!r}.")
    return shape


def _hidden(hidden: Sequence[int], who: str) -> list[int]:
    sizes = [int(h) for h in hidden]
    if not sizes or any(h < 1 for h in sizes):
        raise ValueError(f"{who}: hidden must be a non-empty list of positive layer widths, e.g. [256, 256]; got {hidden!r}.")
    return sizes


class MLPGenerator(nn.Module):
    """``z -> Linear/ReLU stack -> sample`` for points ``(D,)`` or images ``(C, H, W)`` (unflattened at the end).

    Args:
        latent_dim: Size of the latent vector ``z``.
        data_shape: Shape of one sample, ``(2,)`` for 2-D points or ``(C, H, W)`` for images.
        hidden: Widths of the hidden layers.
        output_activation: ``"auto"`` (``tanh`` for images in [-1, 1], none for points), ``"tanh"``,
            ``"sigmoid"`` or ``"none"``.
        batch_norm: BatchNorm after each hidden linear layer.
        num_classes: Class-conditional ``G(z, y)``: the one-hot label joined to ``z`` (Mirza & Osindero 2014): the
            first layer then adds a learned per-class bias, which is what a learned embedding joined to ``z`` amounts
            to, without an extra parameter tensor (whose optimizer step is a sizeable share of a small MLP's step);
            ``None`` for ``G(z)``.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (256, 256),
        output_activation: str = "auto",
        batch_norm: bool = False,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_int("MLPGenerator", "latent_dim", latent_dim, 1)
        if output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(f"MLPGenerator: output_activation must be one of {_OUTPUT_ACTIVATIONS}, got {output_activation!r}.")
        self.latent_dim = latent_dim
        self.data_shape = _shape(data_shape, "MLPGenerator")
        if output_activation == "auto":
            output_activation = "tanh" if len(self.data_shape) > 1 else "none"
        self.output_activation = output_activation
        self.num_classes = check_num_classes(num_classes, "MLPGenerator")
        layers: list[nn.Module] = []
        width = latent_dim + (num_classes or 0)
        for h in _hidden(hidden, "MLPGenerator"):
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            width = h
        layers.append(nn.Linear(width, math.prod(self.data_shape)))
        if output_activation == "tanh":
            layers.append(nn.Tanh())
        elif output_activation == "sigmoid":
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Map ``(N, latent_dim)`` noise (and labels ``(N,)`` when conditional) to samples ``(N, *data_shape)``."""
        need_labels(y, self.num_classes is not None, "MLPGenerator")
        h = z if self.num_classes is None else torch.cat([z, nn.functional.one_hot(y, self.num_classes).to(z.dtype)], 1)
        return self.net(h).view(z.shape[0], *self.data_shape)


class MLPDiscriminator(nn.Module):
    """``x -> flatten -> Linear/LeakyReLU stack -> logit``.

    Returns logits of shape ``(N,)``.

    Args:
        data_shape: Shape of one sample, ``(2,)`` or ``(C, H, W)``.
        hidden: Widths of the hidden layers.
        negative_slope: LeakyReLU slope.
        norm: ``"none"`` (default; per-sample, as gradient penalties and DDP equivalence need), ``"layer"``
            (LayerNorm, still per-sample) or ``"batch"`` (BatchNorm1d, mixes samples of a batch).
        num_classes: Class-conditional ``D(x, y)`` with a projection head (Miyato & Koyama 2018) on the last
            hidden features; ``None`` for ``D(x)``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int] = (256, 256),
        negative_slope: float = 0.2,
        norm: str = "none",
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"MLPDiscriminator: norm must be one of {_NORMS}, got {norm!r}.")
        self.data_shape = _shape(data_shape, "MLPDiscriminator")
        layers: list[nn.Module] = [nn.Flatten()]
        self._block_ends: list[int] = []  # one block per hidden layer (FreezeD's units)
        width = math.prod(self.data_shape)
        for i, h in enumerate(_hidden(hidden, "MLPDiscriminator")):
            layers.append(nn.Linear(width, h))
            if norm != "none" and i > 0:  # no normalization right on the input layer, as in DCGAN
                layers.append(nn.LayerNorm(h) if norm == "layer" else nn.BatchNorm1d(h))
            layers.append(nn.LeakyReLU(negative_slope))
            self._block_ends.append(len(layers))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.num_classes = check_num_classes(num_classes, "MLPDiscriminator")
        self.projection = ProjectionHead(num_classes, width) if num_classes else None

    def freezable_blocks(self) -> list[nn.Module]:
        """The hidden layers (Linear, norm, LeakyReLU), input side first, for FreezeD (``freeze_d_layers``); the
        output layer is not listed. Each block is a view on ``self.net``'s layers (state-dict keys unchanged)."""
        starts = [0, *self._block_ends[:-1]]
        return [self.net[a:b] for a, b in zip(starts, self._block_ends)]

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Logits ``(N,)`` for samples ``(N, *data_shape)`` (of classes ``y`` when conditional)."""
        need_labels(y, self.projection is not None, "MLPDiscriminator")
        if self.projection is None:
            return self.net(x).squeeze(1)
        return projected_logits(self.net, self.projection, x, y)


__all__ = ["MLPDiscriminator", "MLPGenerator"]

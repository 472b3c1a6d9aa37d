"""SNGAN ResNet generator and discriminator for 32x32 images.

The CIFAR-10 architecture of Miyato et al. (2018), appendix B.4, as in mimicry's ``sngan_32``: G maps ``z``
to a 4x4x256 map and applies three upsampling residual blocks; D has an optimized first block, three more
residual blocks (the first of them downsampling), ReLU, global sum pooling and a linear layer, with spectral
normalization on every layer by default.

Class-conditional (``num_classes`` set), as in Miyato & Koyama (ICLR 2018) and mimicry's ``sngan_32`` cGAN: G's
block BatchNorms become class-conditional (a per-class scale and shift) and D adds a projection term
``<embed(y), h>`` on its pooled features ``h`` (spectrally normalized with the rest of D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_regan.models.conditioning import ConditionalBatchNorm2d, ProjectionHead, check_num_classes, need_labels
from lightning_regan.validation import check_int


IMAGE_SIZE = 32
BOTTOM_WIDTH = 4


def _check_shape(data_shape: Sequence[int], who: str) -> int:
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or shape[0] < 1:
        raise ValueError(
            f"{who} (SNGAN ResNet) supports (C, 32, 32) images only, got data_shape={list(data_shape)}; "
            "resize the data with data.image_size=32, or use model=dcgan for other sizes."
        )
    return shape[0]


def _xavier(module: nn.Module, gain: float) -> None:
    nn.init.xavier_uniform_(module.weight, gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class GBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution: ``BN-ReLU-up-conv-BN-ReLU-conv + up-conv1x1``;
    with ``num_classes`` its two BatchNorms are class-conditional and it is called ``block(x, y)``."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.conditional = num_classes is not None
        self.b1 = ConditionalBatchNorm2d(in_channels, num_classes) if num_classes else nn.BatchNorm2d(in_channels)
        self.c1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.b2 = ConditionalBatchNorm2d(out_channels, num_classes) if num_classes else nn.BatchNorm2d(out_channels)
        self.c2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.c_sc = nn.Conv2d(in_channels, out_channels, 1)
        _xavier(self.c1, math.sqrt(2))
        _xavier(self.c2, math.sqrt(2))
        _xavier(self.c_sc, 1.0)

    def _norm(self, norm: nn.Module, h: Tensor, y: Optional[Tensor]) -> Tensor:
        return norm(h, y) if self.conditional else norm(h)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = F.interpolate(F.relu(self._norm(self.b1, x, y)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self._norm(self.b2, self.c1(h), y)))
        return h + self.c_sc(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """Residual block ``ReLU-conv-ReLU-conv[-avgpool]`` with a 1x1 shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.c1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.c2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.c_sc = nn.Conv2d(in_channels, out_channels, 1) if (downsample or in_channels != out_channels) else None
        _xavier(self.c1, math.sqrt(2))
        _xavier(self.c2, math.sqrt(2))
        if self.c_sc is not None:
            _xavier(self.c_sc, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.c1(F.relu(x))))
        sc = x if self.c_sc is None else self.c_sc(x)
        if self.downsample:
            h, sc = F.avg_pool2d(h, 2), F.avg_pool2d(sc, 2)
        return h + sc


class DBlockOptimized(nn.Module):
    """First D block (no pre-activation on the image): ``conv-ReLU-conv-avgpool + avgpool-conv1x1``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.c2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.c_sc = nn.Conv2d(in_channels, out_channels, 1)
        _xavier(self.c1, math.sqrt(2))
        _xavier(self.c2, math.sqrt(2))
        _xavier(self.c_sc, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
        return h + self.c_sc(F.avg_pool2d(x, 2))


class ResNetGenerator(nn.Module):
    """SNGAN ResNet generator for ``(C, 32, 32)`` images in [-1, 1].

    Args:
        latent_dim: Size of ``z`` (128 in the paper).
        data_shape: ``(C, 32, 32)``.
        channels: Width of every block (256 in the paper).
        num_classes: Class-conditional ``G(z, y)`` with class-conditional BatchNorm in every block; ``None`` for
            ``G(z)``.
    """

    def __init__(self, latent_dim: int, data_shape: Sequence[int], channels: int = 256,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        check_int("ResNetGenerator", "latent_dim", latent_dim, 1)
        check_int("ResNetGenerator", "channels", channels, 1)
        out_channels = _check_shape(data_shape, "ResNetGenerator")
        self.latent_dim = latent_dim
        self.data_shape = (out_channels, IMAGE_SIZE, IMAGE_SIZE)
        self.channels = channels
        self.l1 = nn.Linear(latent_dim, BOTTOM_WIDTH * BOTTOM_WIDTH * channels)
        self.num_classes = check_num_classes(num_classes, "ResNetGenerator")
        self.blocks = nn.Sequential(*(GBlock(channels, channels, num_classes) for _ in range(3)))
        self.b5 = nn.BatchNorm2d(channels)
        self.c5 = nn.Conv2d(channels, out_channels, 3, padding=1)
        _xavier(self.l1, 1.0)
        _xavier(self.c5, 1.0)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images ``(N, C, 32, 32)`` from noise ``(N, latent_dim)`` (and labels ``(N,)`` when conditional)."""
        need_labels(y, self.num_classes is not None, "ResNetGenerator")
        h = self.l1(z).view(z.shape[0], self.channels, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.c5(F.relu(self.b5(h))))


class ResNetDiscriminator(nn.Module):
    """SNGAN ResNet discriminator for ``(C, 32, 32)`` images; returns logits of shape ``(N,)``.

    Args:
        data_shape: ``(C, 32, 32)``.
        channels: Width of every block (128 in the paper).
        spectral_norm: Spectrally normalize every conv and linear layer
            (``torch.nn.utils.parametrizations.spectral_norm``), as in SNGAN. Without it, pair D with a gradient
            penalty. D has no batch statistics, so it is per-sample either way.
        num_classes: Class-conditional ``D(x, y)`` with a projection head (Miyato & Koyama 2018) on the pooled
            features; ``None`` for ``D(x)``.
    """

    def __init__(self, data_shape: Sequence[int], channels: int = 128, spectral_norm: bool = True,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        check_int("ResNetDiscriminator", "channels", channels, 1)
        in_channels = _check_shape(data_shape, "ResNetDiscriminator")
        self.data_shape = (in_channels, IMAGE_SIZE, IMAGE_SIZE)
        self.blocks = nn.Sequential(
            DBlockOptimized(in_channels, channels),
            DBlock(channels, channels, downsample=True),
            DBlock(channels, channels, downsample=False),
            DBlock(channels, channels, downsample=False),
        )
        self.l5 = nn.Linear(channels, 1)
        _xavier(self.l5, 1.0)
        self.num_classes = check_num_classes(num_classes, "ResNetDiscriminator")
        self.projection = ProjectionHead(num_classes, channels) if num_classes else None
        if spectral_norm:
            from torch.nn.utils.parametrizations import spectral_norm as sn

            for layer in self.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    sn(layer)

    def freezable_blocks(self) -> list[nn.Module]:
        """The four residual blocks, input side first, for FreezeD (``freeze_d_layers``); the head is not listed."""
        return list(self.blocks)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Logits ``(N,)`` for images ``(N, C, 32, 32)`` (of classes ``y`` when conditional)."""
        need_labels(y, self.projection is not None, "ResNetDiscriminator")
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        out = self.l5(h).squeeze(1)
        return out if self.projection is None else out + self.projection(h, y)


__all__ = ["ResNetDiscriminator", "ResNetGenerator"]

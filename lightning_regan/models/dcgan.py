"""DCGAN-style convolutional generator and discriminator sized from the image shape.

The layout follows the "standard CNN" of Miyato et al. (2018, SNGAN) and Radford et al. (2016, DCGAN):
G projects ``z`` to an ``s x s`` feature map and doubles the resolution with one stride-2 transposed
convolution per step; D mirrors it with stride-2 convolutions. The start size ``s`` is the image side halved
while it is even and larger than 7: 8 -> 4, 16 -> 4, 28 -> 7, 32 -> 4, 64 -> 4.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Optional

from torch import Tensor, nn

from lightning_regan.models.conditioning import LabelEmbedding, ProjectionHead, check_num_classes, need_labels, projected_logits
from lightning_regan.validation import check_int

_NORMS = ("none", "layer", "batch")


def dcgan_layout(data_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(channels, start_size, num_doublings)`` for an image shape ``(C, H, W)``.

    Raises:
        ValueError: for shapes that are not ``(C, H, H)`` with ``H = s * 2**k``, ``3 <= s <= 7``, ``k >= 1``.
    """
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"DCGAN models need image data of shape (C, H, W), got data_shape={list(data_shape)}; "
            "use model=mlp for 2-D points."
        )
    channels, height, width = shape
    if height != width:
        raise ValueError(
            f"DCGAN models need square images, got {height}x{width}; resize them (e.g. data.image_size={max(height, width)})."
        )
    start, doublings = height, 0
    while start > 7 and start % 2 == 0:
        start //= 2
        doublings += 1
    if doublings == 0 or start < 3 or start > 7:
        raise ValueError(
            f"DCGAN models support square images whose side is a start size 3..7 times a power of two "
            f"(e.g. 8, 16, 28, 32, 64), got {height}x{width}; resize the data, e.g. data.image_size=32."
        )
    return channels, start, doublings


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN initialization: N(0, 0.02) weights, N(1, 0.02) norm scales, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _widths(channels: int, doublings: int, max_channels: int) -> list[int]:
    """Feature widths from the full resolution (``channels``) up to the start size, doubling per level."""
    return [min(channels * 2**i, max_channels) for i in range(doublings + 1)]


class DCGANGenerator(nn.Module):
    """``z -> Linear -> (s x s) -> [ConvTranspose 4x4 s2, BN, ReLU] x k -> Conv 3x3 -> tanh``.

    Output images are in [-1, 1] with shape ``data_shape``.

    Args:
        latent_dim: Size of ``z``.
        data_shape: ``(C, H, W)`` with ``H == W`` (see :func:`dcgan_layout`).
        channels: Feature width at full resolution; it doubles at each lower level up to ``max_channels``.
        max_channels: Cap on the feature width.
        num_classes: Class-conditional ``G(z, y)``: a label embedding of size ``embed_dim`` (default ``latent_dim``)
            joined to ``z`` before the projection; ``None`` for ``G(z)``.
        embed_dim: Size of the label embedding.
    """

    def __init__(self, latent_dim: int, data_shape: Sequence[int], channels: int = 64, max_channels: int = 512,
                 num_classes: Optional[int] = None, embed_dim: Optional[int] = None) -> None:
        super().__init__()
        check_int("DCGANGenerator", "latent_dim", latent_dim, 1)
        if channels < 1 or max_channels < 1:
            raise ValueError(f"DCGANGenerator: channels and max_channels must be >= 1, got {channels}, {max_channels}.")
        out_channels, start, doublings = dcgan_layout(data_shape)
        self.latent_dim = latent_dim
        self.data_shape = (out_channels, start * 2**doublings, start * 2**doublings)
        widths = _widths(channels, doublings, max_channels)[::-1]  # start size first
        self.start = start
        self.num_classes = check_num_classes(num_classes, "DCGANGenerator")
        embed = (embed_dim or latent_dim) if num_classes else 0
        self.project = nn.Sequential(
            nn.Linear(latent_dim + embed, widths[0] * start * start), nn.Unflatten(1, (widths[0], start, start)),
            nn.BatchNorm2d(widths[0]), nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        blocks += [nn.Conv2d(widths[-1], out_channels, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        _init_dcgan(self)
        # after the DCGAN init, which would overwrite the embedding's N(0, 1) start (Embedding is not initialized there)
        self.label_embedding = LabelEmbedding(num_classes, embed) if num_classes else None

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images ``(N, C, H, W)`` from noise ``(N, latent_dim)`` (and labels ``(N,)`` when conditional)."""
        need_labels(y, self.label_embedding is not None, "DCGANGenerator")
        h = z if self.label_embedding is None else self.label_embedding(z, y)
        return self.blocks(self.project(h))


class DCGANDiscriminator(nn.Module):
    """``x -> Conv 3x3 -> [Conv 4x4 s2, norm, LeakyReLU] x k -> Linear -> logit``.

    Returns logits of shape ``(N,)``.

    Args:
        data_shape: ``(C, H, W)`` with ``H == W`` (see :func:`dcgan_layout`).
        channels: Feature width at full resolution; it doubles at each halving up to ``max_channels``.
        max_channels: Cap on the feature width.
        norm: ``"none"`` (default: D stays per-sample, which gradient penalties and DDP equivalence need),
            ``"layer"`` (``GroupNorm(1, C)``: layer norm over C, H, W, per-sample) or ``"batch"`` (BatchNorm2d).
        negative_slope: LeakyReLU slope.
        num_classes: Class-conditional ``D(x, y)``: a projection head (Miyato & Koyama 2018) on the flattened last
            feature map; ``None`` for ``D(x)``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: int = 64,
        max_channels: int = 512,
        norm: str = "none",
        negative_slope: float = 0.2,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"DCGANDiscriminator: norm must be one of {_NORMS}, got {norm!r}.")
        if channels < 1 or max_channels < 1:
            raise ValueError(f"DCGANDiscriminator: channels and max_channels must be >= 1, got {channels}, {max_channels}.")
        in_channels, start, doublings = dcgan_layout(data_shape)
        self.data_shape = (in_channels, start * 2**doublings, start * 2**doublings)
        widths = _widths(channels, doublings, max_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.LeakyReLU(negative_slope)]
        self._block_ends = [len(layers)]  # the stem, then one block per halving (FreezeD's units)
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if norm == "layer":
                layers.append(nn.GroupNorm(1, c_out))
            elif norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(negative_slope))
            self._block_ends.append(len(layers))
        layers += [nn.Flatten(), nn.Linear(widths[-1] * start * start, 1)]
        self.net = nn.Sequential(*layers)
        _init_dcgan(self)
        self.num_classes = check_num_classes(num_classes, "DCGANDiscriminator")
        self.projection = ProjectionHead(num_classes, widths[-1] * start * start) if num_classes else None

    def freezable_blocks(self) -> list[nn.Module]:
        """The stem (3x3 conv) and the stride-2 blocks, input side first, for FreezeD (``freeze_d_layers``); the
        linear head is not listed. Each block is a view on ``self.net``'s layers (state-dict keys unchanged)."""
        starts = [0, *self._block_ends[:-1]]
        return [self.net[a:b] for a, b in zip(starts, self._block_ends)]

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Logits ``(N,)`` for images ``(N, C, H, W)`` (of classes ``y`` when conditional)."""
        need_labels(y, self.projection is not None, "DCGANDiscriminator")
        if self.projection is None:
            return self.net(x).squeeze(1)
        return projected_logits(self.net, self.projection, x, y)


__all__ = ["DCGANDiscriminator", "DCGANGenerator", "dcgan_layout"]

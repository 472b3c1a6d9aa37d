"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020).

The same random transformations as the authors' ``DiffAugment_pytorch.py`` (colour: brightness, saturation,
contrast; translation by up to 1/8 of the image with zero padding; cutout of a square half the image's side), written
against :class:`~lightning_regan.augment.Augment`'s random draws. Every op is a composition of differentiable tensor
operations (additions, products, gathers), so G's gradients pass through them and a gradient penalty can be
differentiated twice through them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_regan.augment.base import Augment, check_images
from lightning_regan.validation import check_fraction


def brightness(aug: Augment, x: Tensor) -> Tensor:
    """Add one uniform offset in ``[-0.5, 0.5)`` per image."""
    return x + (aug.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def saturation(aug: Augment, x: Tensor) -> Tensor:
    """Scale each pixel's deviation from its channel mean by a factor in ``[0, 2)`` per image (identity on grey)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (aug.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def contrast(aug: Augment, x: Tensor) -> Tensor:
    """Scale each image's deviation from its mean by a factor in ``[0.5, 1.5)``."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (aug.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(aug: Augment, x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by a whole number of pixels, up to ``ratio`` of its size per axis; zeros enter."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = aug.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    tx = aug.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
    )
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()


def cutout(aug: Augment, x: Tensor, ratio: float = 0.5) -> Tensor:
    """Set a square of ``ratio`` of the image's side, at a random centre, to zero."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = aug.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    ox = aug.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device), indexing="ij"
    )
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


#: The policy words and the ops they run, in order (as the authors' ``AUGMENT_FNS``).
POLICY_OPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "cutout": ("cutout",),
}
_OPS: dict[str, Callable[..., Tensor]] = {
    "brightness": brightness, "saturation": saturation, "contrast": contrast, "translation": translation, "cutout": cutout,
}


class DiffAugment(Augment):
    """DiffAugment with a policy string: the same random transformation family on every image D sees.

    Args:
        policy: Comma-separated groups (``color``, ``translation``, ``cutout``) or single colour ops
            (``brightness``, ``saturation``, ``contrast``), applied in the order given; a list works too.
            ``""`` is the identity.
        translation_ratio: Largest shift as a fraction of the image size (0.125 in the paper).
        cutout_ratio: Side of the cut square as a fraction of the image size (0.5 in the paper).
        seed: See :class:`~lightning_regan.augment.Augment`.
    """

    def __init__(
        self,
        policy: Union[str, Sequence[str]] = "color,translation,cutout",
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed=seed)
        words = [w.strip() for w in (policy.split(",") if isinstance(policy, str) else policy) if w.strip()]
        ops: list[str] = []
        for word in words:
            if word in POLICY_OPS:
                ops.extend(POLICY_OPS[word])
            elif word in _OPS:
                ops.append(word)
            else:
                choices = ", ".join(list(POLICY_OPS) + ["brightness", "saturation", "contrast"])
                raise ValueError(f"DiffAugment: unknown policy entry {word!r} in {policy!r}; choose from {choices}.")
        self.policy = ",".join(words)
        self.ops = tuple(ops)
        self.translation_ratio = check_fraction("DiffAugment", "translation_ratio", translation_ratio)
        self.cutout_ratio = check_fraction("DiffAugment", "cutout_ratio", cutout_ratio)

    def forward(self, x: Tensor) -> Tensor:
        check_images("DiffAugment", x)
        for name in self.ops:
            if name == "translation":
                x = translation(self, x, self.translation_ratio)
            elif name == "cutout":
                x = cutout(self, x, self.cutout_ratio)
            else:
                x = _OPS[name](self, x)
        return x

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"


__all__ = ["DiffAugment", "POLICY_OPS", "brightness", "contrast", "cutout", "saturation", "translation"]

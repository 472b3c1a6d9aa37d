"""Adaptive discriminator augmentation (Karras et al., "Training Generative Adversarial Networks with Limited Data",
NeurIPS 2020): the ``bgc`` pipeline applied with probability ``p``, and ``p`` steered by the overfitting heuristic
``r_t = E[sign(D(real))]`` toward a target.

The transformations and their strengths are those of StyleGAN2-ADA's ``training/augment.py`` (``bgc``: x-flip, 90°
rotations, integer translation; isotropic scaling, rotation, anisotropic scaling, fractional translation;
brightness, contrast, luma flip, hue rotation, saturation), each applied to each image independently with
probability ``p``. The geometric ops are composed into one 3x3 matrix per image and applied with
``torch.nn.functional.affine_grid`` + ``grid_sample`` (bilinear, reflection padding): plain torch ops, differentiable
in the image, and twice differentiable (a gradient penalty through the pipeline works in torch 2.14, see
``tests/test_augment.py``). The colour ops are one 4x4 colour matrix per image. StyleGAN2-ADA resamples with
wavelet filters and a custom ``grid_sample`` gradient; plain bilinear sampling is what this implementation does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lightning_regan.augment.base import Augment, check_images
from lightning_regan.validation import check_int, check_number

#: The ops of each group letter, in the order they are applied.
GROUPS: dict[str, tuple[str, ...]] = {
    "b": ("xflip", "rotate90", "xint"),
    "g": ("scale", "rotate", "aniso", "xfrac"),
    "c": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
}
_GEOMETRIC = GROUPS["b"] + GROUPS["g"]
_ALL_OPS = _GEOMETRIC + GROUPS["c"]


def _parse_ops(owner: str, ops: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(ops, str):
        words = [w.strip() for w in ops.split(",") if w.strip()]
        if len(words) == 1 and words[0] and set(words[0]) <= set(GROUPS):
            words = [op for letter in words[0] for op in GROUPS[letter]]
    else:
        words = [str(w) for w in ops]
    unknown = [w for w in words if w not in _ALL_OPS]
    if unknown:
        raise ValueError(
            f"{owner}: unknown op(s) {unknown} in {ops!r}; give group letters (e.g. 'bgc') or a comma list of "
            f"{', '.join(_ALL_OPS)}."
        )
    return tuple(op for op in _ALL_OPS if op in words)


# ---------------------------------------------------------------------- batched homogeneous matrices
def _eye(n: int, size: int, device: torch.device) -> Tensor:
    return torch.eye(size, device=device).repeat(n, 1, 1)


def _scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _rotate2d(theta: Tensor) -> Tensor:
    m = _eye(theta.shape[0], 3, theta.device)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _color_op(n: int, device: torch.device, linear: Tensor, offset: Optional[Tensor] = None) -> Tensor:
    """4x4 colour matrices with the 3x3 ``linear`` part ``(N, 3, 3)`` and an optional offset ``(N,)`` on all channels."""
    m = _eye(n, 4, device)
    m[:, :3, :3] = linear
    if offset is not None:
        m[:, :3, 3] = offset[:, None]
    return m


class AdaptiveAugment(Augment):
    """ADA: an augmentation pipeline applied with probability :attr:`p`, adapted from ``r_t`` toward ``target``.

    After every D step ``GANModule`` calls :meth:`observe` with D's logits on the (augmented) reals. The sums of
    ``sign(logit)`` and the image counts are all-reduced over the DDP ranks at every call (a two-number all-reduce,
    so the accumulators, and hence the checkpoint, are the same on every rank); every ``interval`` D steps
    ``r_t = E[sign(D(real))]`` over those steps moves ``p`` by ``sign(r_t - target) * images / (speed_kimg * 1000)``
    (so ``p`` can go from 0 to 1 in ``speed_kimg`` thousand real images, as in the paper), clamped to ``[0, 1]``.
    All of this is tensor arithmetic on the logits' device: no host synchronization. ``p`` and the accumulators are
    buffers, so checkpoints hold them and a resumed run continues with the same ``p``.

    Args:
        p: Initial probability (0 for adaptive runs, as in the paper).
        target: Target of ``r_t`` (0.6 in the paper); ``None`` keeps ``p`` fixed.
        interval: D steps between adjustments (4 in the paper).
        speed_kimg: Thousands of real images over which ``p`` can move by 1 (500 in the paper).
        ops: Group letters (``"bgc"``, ``"bg"``, ``"c"``...) or a comma list of op names (see :data:`GROUPS`).
        xint_max, scale_std, rotate_max, aniso_std, xfrac_std: Geometric strengths (StyleGAN2-ADA's defaults).
        brightness_std, contrast_std, hue_max, saturation_std: Colour strengths (StyleGAN2-ADA's defaults).
        seed: See :class:`~lightning_regan.augment.Augment`.
    """

    def __init__(
        self,
        p: float = 0.0,
        target: Optional[float] = 0.6,
        interval: int = 4,
        speed_kimg: float = 500.0,
        ops: Union[str, Sequence[str]] = "bgc",
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1.0,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        hue_max: float = 1.0,
        saturation_std: float = 1.0,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed=seed)
        who = "AdaptiveAugment"
        check_number(who, "p", p, 0.0, maximum=1.0)
        self.target = check_number(who, "target", target, -1.0, maximum=1.0, optional=True)
        self.interval = check_int(who, "interval", interval, 1)
        self.speed_kimg = check_number(who, "speed_kimg", speed_kimg, 0.0, strict=True)
        self.ops = _parse_ops(who, ops)
        for name, value in (("xint_max", xint_max), ("scale_std", scale_std), ("rotate_max", rotate_max),
                            ("aniso_std", aniso_std), ("xfrac_std", xfrac_std), ("brightness_std", brightness_std),
                            ("contrast_std", contrast_std), ("hue_max", hue_max), ("saturation_std", saturation_std)):
            setattr(self, name, check_number(who, name, value, 0.0))
        #: Probability of each op on each image (the adapted quantity).
        self.register_buffer("p", torch.tensor(float(p)))
        #: The last ``r_t`` that moved ``p`` (over the last ``interval`` D steps, all ranks).
        self.register_buffer("rt", torch.tensor(0.0))
        #: Sum of sign(logit) and number of images since the last adjustment, summed over ranks.
        self.register_buffer("accumulator", torch.zeros(2, dtype=torch.float64))
        #: D steps observed (the adjustment clock).
        self.register_buffer("observed", torch.tensor(0, dtype=torch.int64))

    # ------------------------------------------------------------------ adaptation
    @torch.no_grad()
    def observe(self, real_logits: Tensor) -> dict[str, Tensor]:
        """Accumulate ``sign(D(real))`` over all ranks; move ``p`` every ``interval`` calls. Returns ``ada_p`` and
        ``rt`` (this D step's ``E[sign(D(real))]`` over every rank's batch)."""
        logits = real_logits.detach().reshape(real_logits.shape[0], -1).float().mean(dim=1)
        step = torch.stack([torch.sign(logits).sum(), torch.tensor(float(logits.numel()), device=logits.device)])
        step = step.to(device=self.accumulator.device, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(step)
        self.accumulator += step
        self.observed += 1
        due = (self.observed % self.interval) == 0
        acc = self.accumulator
        rt = (acc[0] / acc[1].clamp_min(1.0)).to(self.p.dtype)
        if self.target is not None:
            moved = self.p + torch.sign(rt - self.target) * (acc[1] / (self.speed_kimg * 1000.0)).to(self.p.dtype)
            self.p.copy_(torch.where(due, moved.clamp(0.0, 1.0), self.p))
        self.rt.copy_(torch.where(due, rt, self.rt))
        self.accumulator.copy_(torch.where(due, torch.zeros_like(acc), acc))
        return {"ada_p": self.p.detach().clone(), "rt": (step[0] / step[1].clamp_min(1.0)).float()}

    # ------------------------------------------------------------------ pipeline
    def _mask(self, n: int, prob: Tensor, device: torch.device) -> Tensor:
        return self.rand(n, device=device) < prob

    def _geometry(self, n: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-image 3x3 matrices mapping output to input pixel coordinates (origin at the centre), and which images
        have a non-identity one."""
        p = self.p.to(device)
        g = _eye(n, 3, device)
        active = torch.zeros(n, dtype=torch.bool, device=device)
        zero = torch.zeros(n, device=device)
        one = torch.ones(n, device=device)

        def gated(values: Tensor, neutral: Tensor, prob: Tensor) -> Tensor:
            nonlocal active
            mask = self._mask(n, prob, device)
            active = active | mask
            return torch.where(mask, values, neutral)

        ops = self.ops
        if "xflip" in ops:
            i = gated(torch.floor(self.rand(n, device=device) * 2), zero, p)
            g = g @ _scale2d(1 - 2 * i, one)
        if "rotate90" in ops:
            i = gated(torch.floor(self.rand(n, device=device) * 4), zero, p)
            g = g @ _rotate2d(-math.pi / 2 * i)
        if "xint" in ops:
            t = (self.rand(n, 2, device=device) * 2 - 1) * self.xint_max
            mask = self._mask(n, p, device)
            active = active | mask
            t = torch.where(mask[:, None], t, torch.zeros_like(t))
            g = g @ _translate2d(torch.round(t[:, 0] * w), torch.round(t[:, 1] * h))
        if "scale" in ops:
            s = gated(torch.exp2(self.randn(n, device=device) * self.scale_std), one, p)
            g = g @ _scale2d(1 / s, 1 / s)
        p_rot = 1 - torch.sqrt((1 - p).clamp(0, 1))  # two rotations: either one with this probability makes p
        if "rotate" in ops:
            theta = gated((self.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max, zero, p_rot)
            g = g @ _rotate2d(-theta)
        if "aniso" in ops:
            s = gated(torch.exp2(self.randn(n, device=device) * self.aniso_std), one, p)
            g = g @ _scale2d(1 / s, s)
        if "rotate" in ops:
            theta = gated((self.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max, zero, p_rot)
            g = g @ _rotate2d(-theta)
        if "xfrac" in ops:
            t = self.randn(n, 2, device=device) * self.xfrac_std
            mask = self._mask(n, p, device)
            active = active | mask
            t = torch.where(mask[:, None], t, torch.zeros_like(t))
            g = g @ _translate2d(t[:, 0] * w, t[:, 1] * h)
        return g, active

    def _color(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-image 4x4 colour matrices (RGB + offset) and which images have a non-identity one."""
        p = self.p.to(device)
        c = _eye(n, 4, device)
        active = torch.zeros(n, dtype=torch.bool, device=device)
        v = torch.tensor([1.0, 1.0, 1.0], device=device) / math.sqrt(3)
        vv = torch.outer(v, v)
        eye3 = torch.eye(3, device=device)
        ops = self.ops

        def mask() -> Tensor:
            nonlocal active
            m = self._mask(n, p, device)
            active = active | m
            return m

        if "brightness" in ops:
            b = torch.where(mask(), self.randn(n, device=device) * self.brightness_std, torch.zeros(n, device=device))
            c = _color_op(n, device, eye3.expand(n, 3, 3), b) @ c
        if "contrast" in ops:
            k = torch.where(mask(), torch.exp2(self.randn(n, device=device) * self.contrast_std), torch.ones(n, device=device))
            c = _color_op(n, device, eye3 * k[:, None, None]) @ c
        if "lumaflip" in ops:
            i = torch.where(mask(), torch.floor(self.rand(n, device=device) * 2), torch.zeros(n, device=device))
            c = _color_op(n, device, eye3 - 2 * vv * i[:, None, None]) @ c
        if "hue" in ops:
            theta = torch.where(mask(), (self.rand(n, device=device) * 2 - 1) * math.pi * self.hue_max,
                                torch.zeros(n, device=device))
            # Rodrigues: rotation by theta about the luma axis v.
            a = 1 / math.sqrt(3)  # the cross-product matrix of v (built from floats: no device-to-host reads)
            k = torch.tensor([[0.0, -a, a], [a, 0.0, -a], [-a, a, 0.0]], device=device)
            sin, cos = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
            c = _color_op(n, device, eye3 + sin * k + (1 - cos) * (k @ k)) @ c
        if "saturation" in ops:
            s = torch.where(mask(), torch.exp2(self.randn(n, device=device) * self.saturation_std), torch.ones(n, device=device))
            c = _color_op(n, device, vv + (eye3 - vv) * s[:, None, None]) @ c
        return c, active

    def forward(self, x: Tensor) -> Tensor:
        check_images("AdaptiveAugment", x)
        if float(self.p) <= 0.0:  # one scalar read: p = 0 costs nothing and is exactly the identity
            return x
        n, channels, h, w = x.shape
        device = x.device
        if any(op in self.ops for op in _GEOMETRIC):
            g, active = self._geometry(n, h, w, device)
            # pixel coordinates -> affine_grid's normalized ones ([-1, 1] over the image, align_corners=False)
            to_pix = _scale2d(torch.full((n,), w / 2, device=device), torch.full((n,), h / 2, device=device))
            to_norm = _scale2d(torch.full((n,), 2 / w, device=device), torch.full((n,), 2 / h, device=device))
            theta = (to_norm @ g @ to_pix)[:, :2, :].to(x.dtype)
            grid = F.affine_grid(theta, [n, channels, h, w], align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            x = torch.where(active[:, None, None, None], warped, x)
        if any(op in self.ops for op in GROUPS["c"]):
            c, active = self._color(n, device)
            c = c.to(x.dtype)
            if channels == 3:
                flat = x.reshape(n, 3, h * w)
                colored = (c[:, :3, :3] @ flat + c[:, :3, 3:]).reshape(n, 3, h, w)
            elif channels == 1:  # StyleGAN2-ADA's rule for grey images: the mean of the RGB rows
                row = c[:, :3, :].mean(dim=1)
                colored = x * row[:, :3].sum(dim=1)[:, None, None, None] + row[:, 3][:, None, None, None]
            else:
                raise ValueError(f"AdaptiveAugment: colour ops need 1 or 3 channels, got {channels}; use ops='bg'.")
            x = torch.where(active[:, None, None, None], colored, x)
        return x

    def extra_repr(self) -> str:
        return f"ops={','.join(self.ops)}, p={float(self.p):.4f}, target={self.target}, interval={self.interval}, speed_kimg={self.speed_kimg}"


#: Short name.
ADA = AdaptiveAugment

__all__ = ["ADA", "AdaptiveAugment", "GROUPS"]

"""2-D Gaussian mixtures (8-mode ring, 25-mode grid) and the mode-coverage metric of VEEGAN/PacGAN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lightning_regan.data.base import GANDataModule
from lightning_regan.validation import check_int

#: Default mode-coverage threshold: a mode needs 20 high-quality samples out of 2,500 (PacGAN's protocol on
#: VEEGAN's benchmarks), i.e. 0.8% of the samples; scaled with the number of samples.
MIN_FRACTION = 20 / 2500

_DEFAULTS = {"ring": {"num_modes": 8, "std": 0.02}, "grid": {"num_modes": 25, "std": 0.05}}


def ring_centers(num_modes: int = 8, radius: float = 2.0) -> Tensor:
    """``num_modes`` centers evenly spaced on a circle of ``radius``, the first at angle 0."""
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_centers(num_modes: int = 25, spacing: float = 2.0) -> Tensor:
    """A ``k x k`` grid (``k = sqrt(num_modes)``) with ``spacing``, centered at the origin: 5x5 covers [-4, 4]^2."""
    side = math.isqrt(num_modes)
    if side * side != num_modes:
        raise ValueError(f"grid mixtures need a square number of modes (e.g. 25 = 5x5), got num_modes={num_modes}.")
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    xx, yy = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).float()


def sample_mixture(centers: Tensor, std: float, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` points of the equal-weight isotropic mixture; returns ``(points (n, 2), mode index (n,))``."""
    labels = torch.randint(len(centers), (n,), generator=generator)
    points = centers[labels] + std * torch.randn(n, centers.shape[1], generator=generator)
    return points, labels


def mode_coverage(
    samples: Tensor,
    centers: Tensor,
    std: float,
    n_std: float = 3.0,
    min_count: Optional[int] = None,
    min_fraction: float = MIN_FRACTION,
) -> dict[str, Any]:
    """Modes covered and share of high-quality samples (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018).

    A sample is *high quality* when it lies within ``n_std`` standard deviations of its nearest center; a mode
    is *covered* when at least ``min_count`` high-quality samples have it as nearest center. With
    ``min_count=None`` the threshold is ``ceil(min_fraction * len(samples))``: 20 of 2,500 by default, as in
    PacGAN, and proportionally for other sample counts. Non-finite samples count as low quality.

    Args:
        samples: Generated points ``(N, 2)``.
        centers: Mixture centers ``(K, 2)``.
        std: Standard deviation of each mixture component.
        n_std: Quality radius in standard deviations.
        min_count: High-quality samples a mode needs to count as covered (overrides ``min_fraction``).
        min_fraction: Threshold as a fraction of ``N`` when ``min_count`` is None.

    Returns:
        ``{"modes_covered": int, "num_modes": int, "hq_fraction": float, "counts": list[int]}`` where
        ``counts[k]`` is the number of high-quality samples nearest to center ``k``.
    """
    if samples.dim() != 2 or centers.dim() != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(
            f"mode_coverage: samples (N, D) and centers (K, D) must be matrices of the same D, got "
            f"{tuple(samples.shape)} and {tuple(centers.shape)}."
        )
    if not std > 0 or not n_std > 0:
        raise ValueError(f"mode_coverage: std and n_std must be > 0, got std={std!r}, n_std={n_std!r}.")
    if min_count is not None and min_count < 1:
        raise ValueError(f"mode_coverage: min_count must be >= 1 or None, got {min_count!r}.")
    if min_count is None and not 0 < min_fraction <= 1:
        raise ValueError(f"mode_coverage: min_fraction must be in (0, 1], got {min_fraction!r}.")
    n = samples.shape[0]
    num_modes = centers.shape[0]
    if n == 0:
        return {"modes_covered": 0, "num_modes": num_modes, "hq_fraction": 0.0, "counts": [0] * num_modes}
    x = samples.detach().to(torch.float64).cpu()
    c = centers.detach().to(torch.float64).cpu()
    finite = torch.isfinite(x).all(dim=1)
    dist = torch.cdist(torch.where(finite[:, None], x, torch.zeros_like(x)), c)
    nearest_dist, nearest = dist.min(dim=1)
    hq = finite & (nearest_dist <= n_std * std)
    counts = torch.bincount(nearest[hq], minlength=num_modes)
    threshold = min_count if min_count is not None else max(1, math.ceil(min_fraction * n - 1e-9))
    return {
        "modes_covered": int((counts >= threshold).sum()),
        "num_modes": num_modes,
        "hq_fraction": float(hq.sum()) / n,
        "counts": [int(v) for v in counts],
    }


class GaussianMixtureDataModule(GANDataModule):
    """Synthetic 2-D Gaussian mixtures: the 8-mode ring and the 25-mode grid of the mode-collapse literature.

    ``kind="ring"``: 8 modes on a circle of radius 2 with std 0.02 (Metz et al. 2017, Unrolled GAN; VEEGAN).
    ``kind="grid"``: 25 modes on a 5x5 grid with spacing 2 in [-4, 4]^2 with std 0.05 (VEEGAN, PacGAN).
    Samples have shape ``(2,)``; items are ``(point, mode_index)``.

    Args:
        kind: ``"ring"`` or ``"grid"``.
        num_modes: Number of modes (default 8 for the ring, 25 for the grid; the grid needs a square number).
        std: Standard deviation of every component (default 0.02 ring, 0.05 grid).
        radius: Ring radius.
        spacing: Grid spacing.
        n_samples: Size of the (fixed) training set.
        n_reference: Size of the reference set used for FID statistics (drawn with another seed).
        seed: Seed of both sets.
        batch_size, num_workers, pin_memory, limit, classes: See :class:`GANDataModule` (labels: mode indices).
    """

    fid_feature_extractor = "identity"

    def __init__(
        self,
        kind: str = "ring",
        num_modes: Optional[int] = None,
        std: Optional[float] = None,
        radius: float = 2.0,
        spacing: float = 2.0,
        n_samples: int = 100_000,
        n_reference: int = 10_000,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        limit: Optional[Union[int, float]] = None,
        classes: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, limit=limit,
                         classes=classes)
        if kind not in _DEFAULTS:
            raise ValueError(f"GaussianMixtureDataModule: kind must be 'ring' or 'grid', got {kind!r}.")
        num_modes = _DEFAULTS[kind]["num_modes"] if num_modes is None else num_modes
        std = _DEFAULTS[kind]["std"] if std is None else std
        check_int("GaussianMixtureDataModule", "num_modes", num_modes, 1)
        if not std > 0 or not radius > 0 or not spacing > 0:
            raise ValueError(f"GaussianMixtureDataModule: std, radius and spacing must be > 0, got {std!r}, {radius!r}, {spacing!r}.")
        if n_samples < 1 or n_reference < 1:
            raise ValueError(f"GaussianMixtureDataModule: n_samples and n_reference must be >= 1, got {n_samples}, {n_reference}.")
        self.kind = kind
        self.num_modes = num_modes
        self.num_classes = num_modes  # the items' labels are the mode indices
        self.std = float(std)
        self.radius = float(radius)
        self.spacing = float(spacing)
        self.n_samples = n_samples
        self.n_reference = n_reference
        self.seed = seed
        self.name = kind
        self.shape = (2,)
        #: Mixture centers ``(K, 2)``.
        self.centers: Tensor = ring_centers(num_modes, radius) if kind == "ring" else grid_centers(num_modes, spacing)

    def _sample(self, n: int, seed: int) -> TensorDataset:
        return TensorDataset(*sample_mixture(self.centers, self.std, n, torch.Generator().manual_seed(seed)))

    def _build_train(self) -> Dataset:
        return self._sample(self.n_samples, self.seed)

    def _build_reference(self) -> Dataset:
        return self._sample(self.n_reference, self.seed + 1_000_003)

    def _identity(self) -> dict[str, Any]:
        scale = {"radius": self.radius} if self.kind == "ring" else {"spacing": self.spacing}
        return {"kind": self.kind, "num_modes": self.num_modes, "std": self.std, **scale,
                "n_reference": self.n_reference, "seed": self.seed}


__all__ = ["GaussianMixtureDataModule", "MIN_FRACTION", "grid_centers", "mode_coverage", "ring_centers", "sample_mixture"]

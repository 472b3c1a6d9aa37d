"""Unbiased MMD² with a mixture of RBF kernels: a distance that is zero only when two distributions match.

The Fréchet distance compares means and covariances only, so on 2-D points (identity features) any blur of a
mixture that keeps its first two moments (the 8-Gaussian ring smeared along its circle) scores about 0. MMD² with
a characteristic kernel sees the whole distribution. The kernel here is the mean of Gaussian RBF kernels
``exp(-||x - y||² / (2 s²))`` at bandwidths ``s = scale * median pairwise distance of the real sample``, so the
metric follows the data's own scale (from the width of one mode to that of the whole set) without tuning.

The estimator is the unbiased U-statistic (Gretton et al. 2012, eq. 3): ``mean_{i!=j} k(x_i, x_j) + mean_{i!=j}
k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)``; its expectation is the population MMD², so two samples of one
distribution average to 0 (single values may be slightly negative). The real-real term is fixed for a run and
computed once (:meth:`KernelMMD.set_real`); each evaluation costs the generated-generated and generated-real sums,
in row chunks so memory stays ``chunk x n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: Bandwidths as multiples of the real sample's median pairwise distance: 1/64 .. 1. On the ring (radius 2,
#: mode std 0.02, median distance ~2.8) the narrowest is ~2 mode widths, the widest the ring's diameter.
DEFAULT_SCALES: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1.0)


def median_pairwise_distance(x: Tensor, max_samples: int = 2000) -> float:
    """Median Euclidean distance between distinct rows of ``x`` (the first ``max_samples`` rows)."""
    x = x[:max_samples].double().reshape(min(max_samples, x.shape[0]), -1)
    if x.shape[0] < 2:
        raise ValueError(f"The median pairwise distance needs at least 2 samples, got {x.shape[0]}.")
    d = torch.cdist(x, x)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return float(d[i, j].median())


def rbf_bandwidths(real: Tensor, scales: Sequence[float] = DEFAULT_SCALES) -> Tensor:
    """``scales * median pairwise distance of real`` (float64); raises when the real sample has no spread."""
    median = median_pairwise_distance(real)
    if not median > 0:
        raise ValueError("The real samples are all identical: the RBF bandwidths (multiples of their median "
                         "pairwise distance) would be 0.")
    return torch.tensor([float(s) * median for s in scales], dtype=torch.float64)


def _kernel_block_sum(d2: Tensor, gammas: Tensor) -> Tensor:
    """``sum over the block of sum_k exp(-gamma_k d2)``: the kernels added in float32 (each term is in [0, 1]), the
    row sums reduced in float64."""
    acc = torch.exp(-gammas[0] * d2)
    for gamma in gammas[1:]:
        acc += torch.exp(-gamma * d2)
    return acc.sum(dim=1).double().sum()


def rbf_kernel_sum(x: Tensor, y: Tensor, bandwidths: Tensor, chunk: int = 1024, same: bool = False) -> Tensor:
    """``sum_{i,j} k(x_i, y_j)`` for the mean of RBF kernels at ``bandwidths`` (float64 scalar).

    Args:
        same: ``x`` and ``y`` are the same sample: leave out the diagonal (``i == j``, where ``k = 1``), and sum
            only the blocks on and above the diagonal (the matrix is symmetric).
    """
    x, y = x.reshape(x.shape[0], -1).float(), y.reshape(y.shape[0], -1).float()
    gammas = (1.0 / (2.0 * bandwidths.to(x.device, torch.float64) ** 2)).float()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        rows = x[start:start + chunk]
        if same:  # the diagonal block once, the blocks right of it twice
            total += _kernel_block_sum(torch.cdist(rows, rows).square_(), gammas)
            if start + chunk < y.shape[0]:
                total += 2 * _kernel_block_sum(torch.cdist(rows, y[start + chunk:]).square_(), gammas)
        else:
            total += _kernel_block_sum(torch.cdist(rows, y).square_(), gammas)
    total /= len(gammas)
    if same:
        total -= x.shape[0]
    return total


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidths: Tensor, chunk: int = 1024) -> Tensor:
    """Unbiased MMD² of samples ``x`` and ``y`` (each at least 2 rows) with the RBF-mixture kernel."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {n} and {m}.")
    kxx = rbf_kernel_sum(x, x, bandwidths, chunk, same=True) / (n * (n - 1))
    kyy = rbf_kernel_sum(y, y, bandwidths, chunk, same=True) / (m * (m - 1))
    kxy = rbf_kernel_sum(x, y, bandwidths, chunk) / (n * m)
    return kxx + kyy - 2 * kxy


@dataclass
class RBFReference:
    """The real side of the MMD, fixed for a run: the real features, the bandwidths derived from them and the
    real-real kernel mean (the costly constant term, computed once)."""

    features: Tensor
    bandwidths: Tensor
    real_term: Tensor

    @classmethod
    def of(cls, real: Tensor, scales: Sequence[float] = DEFAULT_SCALES, chunk: int = 1024) -> "RBFReference":
        real = real.detach().reshape(real.shape[0], -1).float()
        if real.shape[0] < 2:
            raise ValueError(f"MMD needs at least 2 real samples, got {real.shape[0]}.")
        if not bool(torch.isfinite(real).all()):
            raise ValueError("MMD: the real features are not all finite.")
        bandwidths = rbf_bandwidths(real, scales)
        n = real.shape[0]
        return cls(real, bandwidths, rbf_kernel_sum(real, real, bandwidths, chunk, same=True).cpu() / (n * (n - 1)))

    def mmd2(self, fake: Tensor, chunk: int = 1024) -> Tensor:
        """Unbiased MMD² of ``fake`` to this reference (float64 scalar on the CPU); NaN for non-finite ``fake``."""
        fake = fake.reshape(fake.shape[0], -1)
        m = fake.shape[0]
        if m < 2:
            raise ValueError(f"MMD needs at least 2 generated samples, got {m}.")
        if not bool(torch.isfinite(fake).all()):
            return torch.tensor(math.nan, dtype=torch.float64)
        real = self.features.to(fake.device)
        kyy = rbf_kernel_sum(fake, fake, self.bandwidths, chunk, same=True) / (m * (m - 1))
        kxy = rbf_kernel_sum(real, fake, self.bandwidths, chunk) / (real.shape[0] * m)
        return (self.real_term.to(fake.device) + kyy - 2 * kxy).cpu()


class KernelMMD(Metric):
    """Unbiased RBF-mixture MMD² between a fixed real sample and the generated features of each evaluation.

    The generated features are the only state (``dist_reduce_fx="cat"``: under DDP each rank adds its share and
    every rank computes the same value after the sync). The real side (:class:`RBFReference`: real sample,
    bandwidths, real-real kernel mean) is set once with :meth:`set_real` and held by every rank as a plain attribute,
    outside the synced states (torchmetrics syncs only ``add_state`` states), as the FID's real statistics are.

    Args:
        scales: Bandwidths as multiples of the real sample's median pairwise distance.
        chunk: Rows per kernel block (memory ``chunk x n`` floats per bandwidth pass).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, scales: Sequence[float] = DEFAULT_SCALES, chunk: int = 1024) -> None:
        super().__init__()
        self.scales = check_scales("KernelMMD", scales)
        if int(chunk) < 1:
            raise ValueError(f"KernelMMD: chunk must be >= 1, got {chunk!r}.")
        self.chunk = int(chunk)
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self.reference: Optional[RBFReference] = None

    @property
    def bandwidths(self) -> Optional[Tensor]:
        return None if self.reference is None else self.reference.bandwidths

    def set_real(self, real: Tensor) -> None:
        """Use these real features ``(N, D)``: bandwidths and the real-real kernel mean are computed here, once."""
        self.reference = RBFReference.of(real, self.scales, self.chunk)

    def update(self, features: Tensor) -> None:
        """Add generated features ``(N, D)``."""
        self.fake_features.append(features.detach().reshape(features.shape[0], -1).float())

    def compute(self) -> Tensor:
        """MMD² (float64 scalar); NaN when the generated features are not finite (a diverged generator)."""
        if self.reference is None:
            raise RuntimeError("KernelMMD.compute called before set_real.")
        return self.reference.mmd2(dim_zero_cat(self.fake_features), self.chunk)


def check_scales(who: str, scales: Sequence[float]) -> tuple[float, ...]:
    """``scales`` as a tuple of positive floats, else ValueError."""
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: mmd scales must be a list of positive numbers, got {scales!r}.") from None
    if not out or not all(math.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"{who}: mmd scales must be a list of positive numbers, got {scales!r}.")
    return out


__all__ = ["DEFAULT_SCALES", "KernelMMD", "RBFReference", "check_scales", "median_pairwise_distance", "mmd2_unbiased",
           "rbf_bandwidths", "rbf_kernel_sum"]

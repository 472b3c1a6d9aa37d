"""FID (and KID) between cached real statistics and generated features, with exact DDP reduction.

Generated features go into :class:`FeatureMoments`, torchmetrics-style float64 sufficient statistics (sum,
outer-product sum, count) with ``dist_reduce_fx="sum"``: each rank adds its share of the samples and the
synced sums equal those of a single process, so every rank computes the same value. The real side is the
cached :class:`~lightning_regan.fid.stats.RealStatistics`, held by every rank (not synced).

:func:`frechet_distance` is torchmetrics' ``_compute_fid`` formula, ``||mu1 - mu2||^2 + tr(S1) + tr(S2) -
2 tr((S1 S2)^1/2)``, with the last trace taken from the eigenvalues of the symmetric PSD matrix
``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``): ``eigvalsh`` instead of a general ``eigvals`` is about
10x faster at 2048-d on a CPU, and ``S1^1/2`` of the fixed real covariance is computed once per run.

With fewer generated samples than features (``n <= d``, e.g. 1,000 samples of 2048-d Inception features), that
``d x d`` route costs two ``d^3`` products and a ``d x d`` eigendecomposition (about 2 s at 2048-d on a 2-core
CPU) whatever ``n``: :func:`frechet_distance_low_rank` takes the same eigenvalues from the ``n x n`` matrix
``P P^T`` with ``P = (F - mean) S1^1/2 / sqrt(n - 1)`` (``P^T P = S1^1/2 S2 S1^1/2``), in ``O(n d^2)``. The
generated features are kept for it while there are at most ``d`` of them (see ``scripts/bench_fid.py``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.kid import poly_mmd
from torchmetrics.utilities import dim_zero_cat

from lightning_regan.fid.stats import FeatureMoments, RealStatistics


def sqrtm_psd(sigma: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    values, vectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, sqrt_sigma1: Optional[Tensor] = None) -> Tensor:
    """Fréchet distance of ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64 advised).

    Args:
        sqrt_sigma1: ``sqrtm_psd(sigma1)`` when already known (the real covariance does not change).
    """
    root = sqrtm_psd(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
    inner = root @ sigma2 @ root
    eigenvalues = torch.linalg.eigvalsh((inner + inner.T) / 2)
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.clamp(min=0).sqrt().sum()


def frechet_distance_low_rank(mu1: Tensor, sigma1: Tensor, features2: Tensor, sqrt_sigma1: Tensor) -> Tensor:
    """:func:`frechet_distance` to the Gaussian fit of ``features2`` (``n`` rows, unbiased covariance), in
    ``O(n d^2)``: the nonzero eigenvalues of ``S1^1/2 S2 S1^1/2 = P^T P`` are those of the ``n x n`` ``P P^T``."""
    f = features2.double()
    n = f.shape[0]
    mu2 = f.mean(dim=0)
    centered = f - mu2
    projected = centered @ sqrt_sigma1 / math.sqrt(n - 1)
    gram = projected @ projected.T
    eigenvalues = torch.linalg.eigvalsh((gram + gram.T) / 2)
    trace2 = centered.square().sum() / (n - 1)
    return (mu1 - mu2).square().sum() + sigma1.trace() + trace2 - 2 * eigenvalues.clamp(min=0).sqrt().sum()


class _GatheredFeatures(Metric):
    """Features from every rank, concatenated on sync (``dist_reduce_fx="cat"``)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor) -> None:
        self.features.append(features.detach().float())

    def compute(self) -> Tensor:
        return dim_zero_cat(self.features)


def kernel_inception_distance(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (polynomial-kernel MMD^2, mean and std over random subsets), as torchmetrics, but seeded.

    ``subset_size`` is clipped to the smaller sample count; when that covers both sets entirely, the single
    (order-independent) value is returned with std 0.
    """
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated samples, got {real.shape[0]} and {fake.shape[0]}.")
    if size == real.shape[0] == fake.shape[0]:
        # every "subset" is the whole set: the MMD does not depend on the order, so compute it once
        return float(poly_mmd(real.double(), fake.double())), 0.0
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=gen)[:size].to(real.device)]
        f = fake[torch.randperm(fake.shape[0], generator=gen)[:size].to(fake.device)]
        scores.append(poly_mmd(r.double(), f.double()))
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


class FeatureDistances(nn.Module):
    """FID and optionally KID between real statistics and generated features.

    Usage: :meth:`set_real` once, then per evaluation :meth:`reset_fake`, :meth:`update` (each rank its share),
    :meth:`compute` (collective under DDP: every rank must call it).

    Args:
        num_features: Feature width.
        kid: Also compute KID (needs the real features, ``RealStatistics.features``).
        kid_subsets: Number of KID subsets.
        kid_subset_size: Samples per KID subset (clipped to the available counts).
        seed: Seed of the KID subsets (same on every rank, so every rank gets the same KID).
    """

    def __init__(
        self, num_features: int, kid: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
    ) -> None:
        super().__init__()
        if kid_subsets < 1 or kid_subset_size < 2:
            raise ValueError(f"kid_subsets must be >= 1 and kid_subset_size >= 2, got {kid_subsets}, {kid_subset_size}.")
        self.num_features = num_features
        self.fake = FeatureMoments(num_features)
        self.kid = kid
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        # The generated features themselves: for KID, and for the low-rank FID while there are at most
        # num_features of them on this rank (beyond, only the moments are kept).
        self.fake_features = _GatheredFeatures()
        self._local_count = 0
        self._real: Optional[RealStatistics] = None
        self._real_sqrt_cov: Optional[Tensor] = None
        self._real_device_moments: Optional[tuple[Tensor, Tensor]] = None

    def set_real(self, stats: RealStatistics) -> None:
        """Use these real statistics (every rank holds them; they are not synced)."""
        if stats.num_features != self.num_features:
            raise ValueError(f"Real statistics have {stats.num_features} features, the metric expects {self.num_features}.")
        if stats.num_samples < 2:
            raise ValueError(f"FID needs at least 2 real samples, the statistics have {stats.num_samples}.")
        if self.kid and stats.features is None:
            raise ValueError("KID needs the real features: compute the statistics with keep_features=True.")
        self._real = stats
        self._real_sqrt_cov = None

    def reset_fake(self) -> None:
        self.fake.reset()
        self.fake_features.reset()
        self._local_count = 0

    def update(self, features: Tensor) -> None:
        """Add generated features ``(N, num_features)``."""
        self.fake.update(features)
        self._local_count += int(features.shape[0])
        if self.kid or self._local_count <= self.num_features:
            self.fake_features.update(features)
        elif self.fake_features.features:  # too many for the low-rank path: the moments serve
            self.fake_features.reset()

    def prepare(self, device: torch.device) -> None:
        """Precompute the square root of the real covariance on ``device`` (else done at the first compute)."""
        if self._real is not None:
            self._real_moments(torch.device(device))

    def _real_moments(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Real mean, covariance and its square root on ``device``, computed once per :meth:`set_real` and device."""
        assert self._real is not None
        if self._real_sqrt_cov is None or self._real_sqrt_cov.device != device:
            mean, cov = self._real.mean().to(device, torch.float64), self._real.cov().to(device, torch.float64)
            self._real_device_moments = (mean, cov)
            self._real_sqrt_cov = sqrtm_psd(cov)
        assert self._real_device_moments is not None
        mean, cov = self._real_device_moments
        return mean, cov, self._real_sqrt_cov

    def compute(self) -> dict[str, float]:
        """``{"fid": ...}`` plus ``"kid_mean"``/``"kid_std"`` when KID is on. NaN when the generated features
        are not finite (a diverged generator). Collective under DDP."""
        if self._real is None:
            raise RuntimeError("FeatureDistances.compute called before set_real.")
        mean, cov, count = self.fake.compute()
        if int(count) < 2:
            raise ValueError(f"FID needs at least 2 generated samples, got {int(count)}.")
        # count is the synced total, the same on every rank: all ranks take the same (collective) branch, and
        # count <= num_features means no rank dropped its features.
        low_rank = int(count) <= self.num_features
        if bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all()):
            real_mean, real_cov, root = self._real_moments(mean.device)
            if low_rank:
                features = self.fake_features.compute().to(mean.device)
                fid = float(frechet_distance_low_rank(real_mean, real_cov, features, root))
            else:
                fid = float(frechet_distance(real_mean, real_cov, mean, cov, sqrt_sigma1=root))
        else:
            if low_rank:
                self.fake_features.compute()  # keep the collective calls the same on every rank
            fid = math.nan
        out = {"fid": fid}
        if self.kid:
            fake = self.fake_features.compute()
            real = self._real.features.float().to(fake.device)
            if not bool(torch.isfinite(fake).all()):
                out["kid_mean"], out["kid_std"] = math.nan, math.nan
            else:
                out["kid_mean"], out["kid_std"] = kernel_inception_distance(
                    real, fake, self.kid_subsets, self.kid_subset_size, self.seed
                )
        return out


__all__ = [
    "FeatureDistances",
    "FeatureMoments",
    "frechet_distance",
    "frechet_distance_low_rank",
    "kernel_inception_distance",
    "sqrtm_psd",
]

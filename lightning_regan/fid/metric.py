"""FID (and KID, FID-infinity, RBF MMD²) between cached real statistics and generated features: one torchmetrics
``Metric``, :class:`FeatureDistances`, with exact DDP reduction.

Its states are the generated side's torchmetrics-style float64 sufficient statistics (sum, outer-product sum,
count; ``dist_reduce_fx="sum"``) and, when needed, the generated features (``"cat"``): each rank adds its share of
the samples and the synced states equal those of a single process, so every rank computes the same value. The real
side is the cached :class:`~lightning_regan.fid.stats.RealStatistics` (and the MMD's
:class:`~lightning_regan.fid.mmd.RBFReference`), held by every rank as plain attributes, never synced.

:func:`frechet_distance` is torchmetrics' ``_compute_fid`` formula, ``||mu1 - mu2||^2 + tr(S1) + tr(S2) -
2 tr((S1 S2)^1/2)``, with the last trace taken from the eigenvalues of the symmetric PSD matrix
``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``): ``eigvalsh`` instead of a general ``eigvals`` is about
10x faster at 2048-d on a CPU, and ``S1^1/2`` of the fixed real covariance is computed once per run.

With fewer generated samples than features (``n <= d``, e.g. 1,000 samples of 2048-d Inception features), that
``d x d`` route costs two ``d^3`` products and a ``d x d`` eigendecomposition (about 2 s at 2048-d on a 2-core
CPU) whatever ``n``: :func:`frechet_distance_low_rank` takes the same eigenvalues from the ``n x n`` matrix
``P P^T`` with ``P = (F - mean) S1^1/2 / sqrt(n - 1)`` (``P^T P = S1^1/2 S2 S1^1/2``), in ``O(n d^2)``. The
generated features are kept for it while there are at most ``d`` of them (see ``scripts/bench_fid.py``).

The FID of ``n`` samples is biased upwards by roughly ``c / n``: :func:`fid_infinity` removes that bias by
extrapolation (Chong & Forsyth 2020), and KID and MMD² are unbiased by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image.kid import poly_mmd
from torchmetrics.utilities import dim_zero_cat

from lightning_regan.fid.mmd import DEFAULT_SCALES, RBFReference, check_scales
from lightning_regan.fid.stats import FeatureMoments, RealStatistics, mean_and_cov, update_moments


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


#: Subset sizes of :func:`fid_infinity`, as fractions of the available samples (Chong & Forsyth 2020 use 15 sizes
#: from 5,000 to 50,000 Inception features; a monitor has its own ~1,000 generated features).
FID_INF_FRACTIONS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def fid_infinity(
    real_features: Tensor, fake_features: Tensor, fractions: tuple[float, ...] = FID_INF_FRACTIONS,
    draws: int = 4, seed: int = 0,
) -> tuple[float, list[tuple[float, float]]]:
    """FID extrapolated to infinitely many samples (Chong & Forsyth 2020, "FID-infinity") from the features at hand.

    The FID of ``n`` samples exceeds its population value by a bias that is, to first order, linear in ``1/n``.
    Here subsets of a fraction ``f`` of BOTH sides (``f * n_real`` real and ``f * n_fake`` generated rows, drawn
    without replacement, ``draws`` times for ``f < 1``) are scored, so both sides' biases scale as ``1/f``; a
    least-squares line of FID against ``1/f`` is evaluated at ``1/f = 0``. No extra generator pass: the monitor's
    own generated features and the kept real features serve.

    Returns:
        ``(fid_inf, [(f, mean FID at f), ...])``; NaN when the features are not finite.
    """
    if not fractions or not all(0 < f <= 1 for f in fractions) or len(set(fractions)) < 2:
        raise ValueError(f"fid_infinity: fractions must be >= 2 distinct values in (0, 1], got {fractions!r}.")
    if draws < 1:
        raise ValueError(f"fid_infinity: draws must be >= 1, got {draws!r}.")
    real, fake = real_features.double(), fake_features.double()
    if not (bool(torch.isfinite(real).all()) and bool(torch.isfinite(fake).all())):
        return math.nan, []
    gen = torch.Generator().manual_seed(seed)
    points: list[tuple[float, float]] = []
    for f in sorted(fractions):
        nr, nf = max(2, round(f * real.shape[0])), max(2, round(f * fake.shape[0]))
        values = []
        for _ in range(1 if f == 1 else draws):
            r = real if nr == real.shape[0] else real[torch.randperm(real.shape[0], generator=gen)[:nr].to(real.device)]
            g = fake if nf == fake.shape[0] else fake[torch.randperm(fake.shape[0], generator=gen)[:nf].to(fake.device)]
            r_mean, r_cov = r.mean(0), torch.cov(r.T)
            values.append(float(frechet_distance(r_mean, r_cov, g.mean(0), torch.cov(g.T))))
        points.append((f, sum(values) / len(values)))
    x = torch.tensor([1 / f for f, _ in points], dtype=torch.float64)
    y = torch.tensor([v for _, v in points], dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()
    return float(y.mean() - slope * x.mean()), points


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


class FeatureDistances(Metric):
    """FID (and optionally KID, FID-infinity, RBF MMD²) between fixed real statistics and generated features.

    A torchmetrics ``Metric``. Its states are the generated side only: torchmetrics FID's float64 sufficient
    statistics (``features_sum``, ``features_cov_sum``, ``num_samples``, ``dist_reduce_fx="sum"``) and, when kept,
    the generated features themselves (``dist_reduce_fx="cat"``). Under DDP each rank adds its share and
    ``compute`` (collective: every rank must call it) syncs them, so every rank gets the single-process value. The
    real side (:class:`~lightning_regan.fid.stats.RealStatistics`, cached on disk; the RBF reference of the MMD) is
    set once with :meth:`set_real` and held by every rank as plain attributes: torchmetrics syncs only
    ``add_state`` states, so the real side is never synced (why not torchmetrics' ``FrechetInceptionDistance``
    itself, whose real states are: ``docs/architecture.md``).

    Usage: :meth:`set_real` once, then per evaluation :meth:`reset`, :meth:`update`, :meth:`compute`.

    Args:
        num_features: Feature width.
        kid: Also compute KID (needs the real features, ``RealStatistics.features``).
        kid_subsets: Number of KID subsets.
        kid_subset_size: Samples per KID subset (clipped to the available counts).
        seed: Seed of the KID subsets and FID-infinity's subsets (the same on every rank: the same value everywhere).
        fid_inf: Also compute ``fid_inf``, :func:`fid_infinity` of the same features (needs the real features).
        mmd: Also compute ``mmd``, the unbiased RBF-mixture MMD² (:mod:`lightning_regan.fid.mmd`; needs the real
            features).
        mmd_scales: Its bandwidths, as multiples of the real features' median pairwise distance.
        num_samples: Generated samples per evaluation when known: with only FID asked for and more samples than
            features, the features are not kept (the ``d x d`` route needs only the moments). ``None`` keeps them.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self, num_features: int, kid: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
        fid_inf: bool = False, mmd: bool = False, mmd_scales: Sequence[float] = DEFAULT_SCALES,
        num_samples: Optional[int] = None,
    ) -> None:
        super().__init__()
        if kid_subsets < 1 or kid_subset_size < 2:
            raise ValueError(f"kid_subsets must be >= 1 and kid_subset_size >= 2, got {kid_subsets}, {kid_subset_size}.")
        self.num_features = num_features
        self.kid = kid
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self.fid_inf = bool(fid_inf)
        self.mmd = bool(mmd)
        self.mmd_scales = check_scales("FeatureDistances", mmd_scales)
        self.needs_real_features = self.kid or self.fid_inf or self.mmd
        # the features, for KID/FID-inf/MMD and for the low-rank FID while there are at most num_features of them
        self.keep_features = self.needs_real_features or num_samples is None or num_samples <= num_features
        self.add_state("features_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("features_cov_sum", torch.zeros(num_features, num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self._real: Optional[RealStatistics] = None
        self._rbf: Optional[RBFReference] = None
        self._real_sqrt_cov: Optional[Tensor] = None
        self._real_device_moments: Optional[tuple[Tensor, Tensor]] = None

    def set_real(self, stats: RealStatistics) -> None:
        """Use these real statistics (every rank holds them; they are not synced)."""
        if stats.num_features != self.num_features:
            raise ValueError(f"Real statistics have {stats.num_features} features, the metric expects {self.num_features}.")
        if stats.num_samples < 2:
            raise ValueError(f"FID needs at least 2 real samples, the statistics have {stats.num_samples}.")
        if self.needs_real_features and stats.features is None:
            raise ValueError("KID, FID-infinity and MMD need the real features: compute the statistics with "
                             "keep_features=True.")
        self._real = stats
        self._real_sqrt_cov = None
        self._rbf = RBFReference.of(stats.features, self.mmd_scales) if self.mmd else None

    def reset_fake(self) -> None:
        """Forget the generated features (the real side stays): :meth:`reset`."""
        self.reset()

    def update(self, features: Tensor) -> None:
        """Add generated features ``(N, num_features)``."""
        self.num_samples += update_moments(features, self.features_sum, self.features_cov_sum)
        if self.keep_features:
            self.fake_features.append(features.detach().float())

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
        """``{"fid": ...}`` plus ``"kid_mean"``/``"kid_std"``, ``"fid_inf"``, ``"mmd"`` when asked for. NaN when the
        generated features are not finite (a diverged generator). Collective under DDP."""
        if self._real is None:
            raise RuntimeError("FeatureDistances.compute called before set_real.")
        count = int(self.num_samples)
        if count < 2:
            raise ValueError(f"FID needs at least 2 generated samples, got {count}.")
        mean, cov = mean_and_cov(self.features_sum, self.features_cov_sum, self.num_samples)
        features = dim_zero_cat(self.fake_features) if self.keep_features else None
        finite = bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all())
        fid = math.nan
        if finite:
            real_mean, real_cov, root = self._real_moments(mean.device)
            if features is not None and count <= self.num_features:
                fid = float(frechet_distance_low_rank(real_mean, real_cov, features.to(mean.device), root))
            else:
                fid = float(frechet_distance(real_mean, real_cov, mean, cov, sqrt_sigma1=root))
        out = {"fid": fid}
        if not self.needs_real_features:
            return out
        assert features is not None and self._real.features is not None
        real = self._real.features.float().to(features.device)
        finite = finite and bool(torch.isfinite(features).all())
        if self.kid:
            out["kid_mean"], out["kid_std"] = kernel_inception_distance(
                real, features, self.kid_subsets, self.kid_subset_size, self.seed) if finite else (math.nan, math.nan)
        if self.fid_inf:
            out["fid_inf"] = fid_infinity(real, features, seed=self.seed)[0] if finite else math.nan
        if self.mmd:
            assert self._rbf is not None
            out["mmd"] = float(self._rbf.mmd2(features)) if finite else math.nan
        return out


__all__ = [
    "FeatureDistances",
    "FeatureMoments",
    "frechet_distance",
    "frechet_distance_low_rank",
    "fid_infinity",
    "kernel_inception_distance",
    "sqrtm_psd",
]

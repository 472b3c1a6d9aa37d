"""Coverage and measurement noise of a generator, as pure functions of feature tensors.

* :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al., NeurIPS 2019). Each set of
  features defines a manifold: the union of balls around its points, each ball reaching the point's ``k``-th
  nearest neighbour in the same set. Precision is the share of generated points inside the real manifold
  (samples look real), recall the share of real points inside the generated manifold (the data is covered).
  A mode-collapsing generator keeps its precision and loses recall.
* :func:`fid_bootstrap_std`: the standard deviation of the FID over bootstrap resamples of the generated
  features: how much the FID of this very generator moves from one draw of ``num_samples`` samples to the
  next. A stop rule compares FID changes with it instead of with a fixed threshold.

No Lightning here; the FID monitor calls these on the features it already computed.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lightning_regan.fid.metric import frechet_distance, frechet_distance_low_rank, sqrtm_psd


def _check_features(name: str, x: Tensor, min_rows: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < min_rows:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N, D) with N >= {min_rows}, got {shape}.")
    return x.detach().double()


def knn_radii(features: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance of each row of ``features`` to its ``k``-th nearest other row (Euclidean)."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start:start + chunk], features)
        # The k+1-th smallest distance: the smallest is the point itself (0).
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    inside = 0
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start:start + chunk], centres)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, real_radii: Optional[Tensor] = None) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` features (Kynkäänniemi et al., 2019).

    Args:
        real: Real features ``(N, D)``.
        fake: Generated features ``(M, D)``.
        k: Neighbourhood size of the manifold estimate (the paper uses 3).
        real_radii: ``knn_radii(real, k)`` when already computed (the real side is fixed for a run).

    Returns:
        ``(precision, recall)``, each in [0, 1]; ``(nan, nan)`` when ``fake`` is not finite.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"precision_recall: k must be an integer >= 1, got {k!r}.")
    real = _check_features("precision_recall: real", real, k + 1)
    fake = _check_features("precision_recall: fake", fake, k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: real and fake widths differ ({real.shape[1]} vs {fake.shape[1]}).")
    if not bool(torch.isfinite(fake).all()):
        return math.nan, math.nan
    if real_radii is None:
        real_radii = knn_radii(real, k)
    elif real_radii.shape != (real.shape[0],):
        raise ValueError(f"precision_recall: real_radii must have shape ({real.shape[0]},), got {tuple(real_radii.shape)}.")
    precision = _share_inside(fake, real, real_radii.to(real))
    recall = _share_inside(real, fake, knn_radii(fake, k))
    return precision, recall


def fid_bootstrap_std(
    real_mean: Tensor,
    real_cov: Tensor,
    fake: Tensor,
    num_draws: int = 10,
    seed: int = 0,
    sqrt_real_cov: Optional[Tensor] = None,
) -> float:
    """Standard deviation of the FID over ``num_draws`` bootstrap resamples of the generated features.

    Args:
        real_mean: Mean of the real features ``(D,)``.
        real_cov: Covariance of the real features ``(D, D)``.
        fake: Generated features ``(M, D)``.
        num_draws: Bootstrap resamples (each of ``M`` rows drawn with replacement).
        seed: Seed of the resampling (a fixed seed makes the estimate reproducible).
        sqrt_real_cov: Square root of ``real_cov`` when already computed.

    Returns:
        The standard deviation (``nan`` when ``fake`` is not finite).
    """
    if not isinstance(num_draws, int) or isinstance(num_draws, bool) or num_draws < 2:
        raise ValueError(f"fid_bootstrap_std: num_draws must be an integer >= 2, got {num_draws!r}.")
    fake = _check_features("fid_bootstrap_std: fake", fake, 2)
    if not bool(torch.isfinite(fake).all()):
        return math.nan
    mu, sigma = real_mean.double().to(fake.device), real_cov.double().to(fake.device)
    root = sqrtm_psd(sigma) if sqrt_real_cov is None else sqrt_real_cov.double().to(fake.device)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_draws):
        rows = fake[torch.randint(fake.shape[0], (fake.shape[0],), generator=gen).to(fake.device)]
        if rows.shape[0] <= rows.shape[1]:  # fewer samples than features: the cheaper exact low-rank form
            values.append(float(frechet_distance_low_rank(mu, sigma, rows, root)))
        else:
            values.append(float(frechet_distance(mu, sigma, rows.mean(0), torch.cov(rows.T), sqrt_sigma1=root)))
    return float(torch.tensor(values, dtype=torch.float64).std(unbiased=True))


def noise_and_coverage(real_mean: Tensor, real_cov: Tensor, real_features: Optional[Tensor], fake: Tensor,
                       num_draws: int, k: int = 3, seed: int = 0, sqrt_real_cov: Optional[Tensor] = None,
                       real_radii: Optional[Tensor] = None) -> dict[str, float]:
    """``fid_std`` (:func:`fid_bootstrap_std`, when ``num_draws``) and ``precision``/``recall``
    (:func:`precision_recall`, when ``real_features`` are given) of the generated features ``fake``; the real side's
    constants (``sqrt_real_cov``, ``real_radii``) are reused when given."""
    out: dict[str, float] = {}
    if num_draws:
        out["fid_std"] = fid_bootstrap_std(real_mean, real_cov, fake, num_draws, seed=seed, sqrt_real_cov=sqrt_real_cov)
    if real_features is not None:
        out["precision"], out["recall"] = precision_recall(real_features.to(fake.device), fake, k, real_radii)
    return out


__all__ = ["fid_bootstrap_std", "knn_radii", "noise_and_coverage", "precision_recall"]

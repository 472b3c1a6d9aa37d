"""Real-data feature statistics, computed once and cached on disk.

The statistics are exactly torchmetrics ``FrechetInceptionDistance``'s ``real_*`` states: the float64 sum of
the features, the float64 sum of their outer products and the count (optionally also the float32 features
themselves, which KID needs). They are cached as ``<cache>/fid_stats/<hash>.pt``, the hash keyed by the
dataset's ``cache_key()``, the extractor's key (name + weights hash / classifier key) and
``num_real_samples``. Any change of key recomputes; files are written atomically and read with
``weights_only=True``.

The DataModule contract (``reference_dataset()``, ``cache_key()``) is :mod:`lightning_regan.fid.data`'s; its
helpers are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_regan.fid.data import RealSource, dataset_cache_key, iter_real_batches, real_source_of, reference_dataset_of
from lightning_regan.fid.extractors import ClassifierExtractor, extractor_key, extractor_num_features
from lightning_regan.fid.weights import PathLike, atomic_torch_save, cache_dir

log = logging.getLogger(__name__)

STATS_VERSION = 1


def update_moments(features: Tensor, features_sum: Tensor, features_cov_sum: Tensor) -> int:
    """Add ``features`` ``(N, ...)`` to the float64 sums in place (torchmetrics FID's update); returns ``N``."""
    f = features.detach().reshape(features.shape[0], -1).double()
    features_sum += f.sum(dim=0)
    features_cov_sum += f.t().mm(f)
    return int(f.shape[0])


def mean_and_cov(features_sum: Tensor, features_cov_sum: Tensor, num_samples: Union[int, Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from the sums, as torchmetrics' FID computes them."""
    mean = (features_sum / num_samples).unsqueeze(0)
    cov = (features_cov_sum - num_samples * mean.t().mm(mean)) / (num_samples - 1)
    return mean.squeeze(0), cov


class FeatureMoments(Metric):
    """Sum, outer-product sum and count of features in float64 (torchmetrics FID's ``fake_*`` states, same names
    without the prefix and the same ``"sum"`` reduction): exact under DDP, every rank adding its share.

    The one implementation of FID's sufficient statistics here: the generated side lives in this metric, the real
    side is a :class:`RealStatistics` built from one (cached on disk, held by every rank and never synced; why not
    torchmetrics' ``FrechetInceptionDistance`` itself: ``docs/architecture.md``).
    """

    full_state_update = False

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.add_state("features_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("features_cov_sum", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: Tensor) -> None:
        self.num_samples += update_moments(features, self.features_sum, self.features_cov_sum)

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, unbiased covariance, count)``."""
        mean, cov = mean_and_cov(self.features_sum, self.features_cov_sum, self.num_samples)
        return mean, cov, self.num_samples


@dataclass
class RealStatistics:
    """Sufficient statistics of real features (torchmetrics FID's ``real_*`` states).

    Attributes:
        features_sum: ``sum_i f_i``, float64 ``(D,)``.
        features_cov_sum: ``sum_i f_i f_i^T``, float64 ``(D, D)``.
        num_samples: Number of real samples encoded.
        features: The float32 features ``(N, D)`` when kept (for KID), else ``None``.
        key: Cache hash these statistics belong to (empty when not cached).
        source: ``"computed"`` or ``"cache"``.
    """

    features_sum: Tensor
    features_cov_sum: Tensor
    num_samples: int
    features: Optional[Tensor] = None
    key: str = ""
    source: str = "computed"

    @property
    def num_features(self) -> int:
        return int(self.features_sum.shape[0])

    def mean(self) -> Tensor:
        return mean_and_cov(self.features_sum, self.features_cov_sum, self.num_samples)[0]

    def cov(self) -> Tensor:
        """Unbiased covariance, as torchmetrics computes it."""
        return mean_and_cov(self.features_sum, self.features_cov_sum, self.num_samples)[1]

    @classmethod
    def from_moments(cls, moments: FeatureMoments, features: Optional[Tensor] = None) -> "RealStatistics":
        """The statistics accumulated in ``moments`` (on the CPU)."""
        return cls(moments.features_sum.detach().cpu().clone(), moments.features_cov_sum.detach().cpu().clone(),
                   int(moments.num_samples), features)

    def to_dict(self) -> dict[str, Any]:
        return {"features_sum": self.features_sum, "features_cov_sum": self.features_cov_sum,
                "num_samples": self.num_samples, "features": self.features, "key": self.key}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], source: str = "cache") -> "RealStatistics":
        return cls(state["features_sum"].double(), state["features_cov_sum"].double(), int(state["num_samples"]),
                   state.get("features"), str(state.get("key", "")), source)


# ---------------------------------------------------------------------------------------------- computation
def accumulate(features: Tensor, stats: Optional[RealStatistics] = None) -> RealStatistics:
    """Add a batch of features to ``stats`` (torchmetrics' update maths, in float64)."""
    if stats is None:
        d = features[0].numel()
        stats = RealStatistics(torch.zeros(d, dtype=torch.float64, device=features.device),
                               torch.zeros(d, d, dtype=torch.float64, device=features.device), 0)
    stats.num_samples += update_moments(features, stats.features_sum, stats.features_cov_sum)
    return stats


#: Number of real samples encoded by :func:`compute_real_statistics` in this process (tests read it).
encoded_real_samples = 0


def compute_real_statistics(
    source: RealSource,
    extractor: nn.Module,
    num_samples: int,
    batch_size: int = 100,
    keep_features: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[Callable[[int], Any]] = None,
) -> RealStatistics:
    """Encode the first ``num_samples`` real samples of ``source`` with ``extractor`` (no cache).

    ``progress(n)`` is called after each batch of ``n`` samples (e.g. a tqdm bar's ``update``).
    """
    global encoded_real_samples
    moments: Optional[FeatureMoments] = None
    kept: list[Tensor] = []
    for x in iter_real_batches(source, num_samples, batch_size):
        with torch.no_grad():
            feats = extractor(x.to(device) if device is not None else x)
        encoded_real_samples += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
        if moments is None:
            moments = FeatureMoments(feats[0].numel()).to(feats.device)
        moments.update(feats)
        if keep_features:
            kept.append(feats.detach().float().cpu())
    count = 0 if moments is None else int(moments.num_samples)
    if count < 2:
        raise ValueError(f"FID needs at least 2 real samples; the reference data gave {count}.")
    if count < num_samples:
        log.warning("Only %d real samples are available (num_real_samples=%d asked for).", count, num_samples)
    assert moments is not None
    return RealStatistics.from_moments(moments, torch.cat(kept) if keep_features else None)


def statistics_key(dataset_key: str, extractor_id: str, num_real_samples: int) -> str:
    """The cache hash of real statistics."""
    payload = {"data": dataset_key, "extractor": extractor_id, "num_real_samples": int(num_real_samples), "version": STATS_VERSION}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def statistics_path(key: str, cache: Optional[PathLike] = None) -> Path:
    return Path(cache or cache_dir()) / "fid_stats" / f"{key}.pt"


def _load_cached(path: Path, key: str, num_features: int, need_features: bool) -> Optional[RealStatistics]:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stats = RealStatistics.from_dict(state, source="cache")
    except Exception as exc:  # truncated, foreign or older file: recompute
        log.warning("Ignoring unreadable FID statistics %s (%s); recomputing.", path, exc)
        return None
    if stats.key != key or stats.num_features != num_features or stats.features_cov_sum.shape != (num_features, num_features):
        log.warning("FID statistics %s do not match their key; recomputing.", path)
        return None
    if need_features and stats.features is None:
        return None  # KID needs the features themselves: recompute and store them
    return stats


def load_or_compute_real_statistics(
    source: Optional[RealSource],
    extractor: nn.Module,
    num_real_samples: int,
    dataset_key: Optional[str] = None,
    cache: Optional[PathLike] = None,
    batch_size: int = 100,
    keep_features: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[Callable[[int], Any]] = None,
) -> RealStatistics:
    """Real statistics from the cache, or computed (and cached when ``dataset_key`` is known).

    Args:
        source: Real samples (dataset, DataLoader, tensor); may be ``None`` when the cache has them.
        extractor: Feature extractor.
        num_real_samples: How many real samples (the first ones of ``source``).
        dataset_key: Identity of the data (``datamodule.cache_key()``); ``None`` disables the disk cache.
        cache: Cache folder (default :func:`~lightning_regan.fid.weights.cache_dir`).
        keep_features: Also keep the features (KID).
        progress: Called with the number of samples of each encoded batch (when computed).
    """
    if num_real_samples < 2:
        raise ValueError(f"num_real_samples must be >= 2, got {num_real_samples}.")
    num_features = extractor_num_features(extractor)
    key = statistics_key(dataset_key, extractor_key(extractor), num_real_samples) if dataset_key else ""
    path = statistics_path(key, cache) if key else None
    if path is not None:
        stats = _load_cached(path, key, num_features, keep_features)
        if stats is not None:
            log.info("Loaded real FID statistics from %s (%d samples).", path, stats.num_samples)
            return stats
    if source is None:
        raise ValueError("No real data to compute FID statistics from (and none cached).")
    stats = compute_real_statistics(source, extractor, num_real_samples, batch_size, keep_features, device, progress)
    stats.key = key
    if path is not None:
        atomic_torch_save(stats.to_dict(), path)
        log.info("Cached real FID statistics in %s.", path)
    return stats


def real_side_payload(source: Optional[RealSource], extractor: nn.Module, num_real_samples: int,
                      **kwargs: Any) -> dict[str, Any]:
    """What one process prepares for all: the real statistics of ``source`` (``kwargs`` as in
    :func:`load_or_compute_real_statistics`) and, for a trained classifier, its weights; plain data to broadcast."""
    stats = load_or_compute_real_statistics(source, extractor, num_real_samples, **kwargs)
    payload = {"stats": stats.to_dict(), "source": stats.source}
    if isinstance(extractor, ClassifierExtractor):
        payload["classifier"] = extractor.export()
    return payload


def real_side_from_payload(payload: Mapping[str, Any],
                           extractor: Optional[nn.Module] = None) -> tuple[nn.Module, RealStatistics]:
    """The extractor (in eval mode) and the real statistics of a :func:`real_side_payload`; without ``extractor``,
    the payload's classifier (its weights, nothing trained again)."""
    if extractor is None:
        extractor = ClassifierExtractor.from_export(payload["classifier"])
    return extractor.eval(), RealStatistics.from_dict(payload["stats"], source=payload["source"])


__all__ = [
    "RealStatistics",
    "FeatureMoments",
    "accumulate",
    "mean_and_cov",
    "update_moments",
    "compute_real_statistics",
    "dataset_cache_key",
    "iter_real_batches",
    "load_or_compute_real_statistics",
    "real_side_from_payload",
    "real_side_payload",
    "real_source_of",
    "reference_dataset_of",
    "statistics_key",
    "statistics_path",
]


#: Fewer real samples than this make an FID mostly bias and noise (its bias grows like 1/N; the usual 10,000-50,000).
MIN_REAL_SAMPLES = 100


def few_real_samples_warning(num_real: int, fix: str) -> Optional[str]:
    """A one-line warning when the real statistics come from fewer than :data:`MIN_REAL_SAMPLES` samples (``fix``:
    how to give it more, in the caller's spelling), else ``None``."""
    if num_real >= MIN_REAL_SAMPLES:
        return None
    return (f"warning: the real statistics of this FID come from {num_real} samples; below {MIN_REAL_SAMPLES} an FID "
            f"is mostly its small-sample bias and noise, not a comparison of the distributions ({fix}).")


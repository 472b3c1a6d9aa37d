"""Intra-class FID: the mean over classes of the FID between the samples generated for class ``k`` and the real
samples of class ``k`` (Miyato & Koyama 2018, "intra-FID"; StudioGAN's per-class FID averaged).

The real side is one :class:`~lightning_regan.fid.stats.RealStatistics` per class, built from the first
``num_real_samples`` labelled real samples (each class gets its share) with :class:`FeatureMoments`, and cached on
disk next to the overall statistics, keyed by the dataset, the extractor, ``num_real_samples`` and the number of
classes. The generated side is the features of one evaluation and their labels; each class's FID is the package's
Fréchet distance (:func:`~lightning_regan.fid.metric.frechet_distance`, or its low-rank form while a class has at
most ``d`` samples). Classes with fewer than 2 generated samples in an evaluation (e.g. weight 0 in
``label_probs``) are left out of the mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_regan.fid.extractors import extractor_key, extractor_num_features
from lightning_regan.fid.metric import frechet_distance, frechet_distance_low_rank, sqrtm_psd
from lightning_regan.fid.stats import FeatureMoments, RealSource, RealStatistics, statistics_key, statistics_path
from lightning_regan.fid.weights import PathLike, atomic_torch_save

log = logging.getLogger(__name__)

#: Cache key suffix of the per-class statistics (the overall statistics of the same data have none).
_PER_CLASS = "per_class"


def _labelled(batch: Any) -> tuple[Tensor, Tensor]:
    """``(samples, labels)`` of a real batch: ``(x, y, ...)`` or a mapping with ``image``/``label`` keys."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in ("image", "images", "x") if k in batch), None)
        y = next((batch[k] for k in ("label", "labels", "y") if k in batch), None)
    elif isinstance(batch, (list, tuple)) and len(batch) > 1:
        x, y = batch[0], batch[1]
    else:
        x, y = batch, None
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(
            "Intra-class FID needs labelled real data: items (sample, label) or {'image': ..., 'label': ...}; the "
            "reference data has no labels."
        )
    return x, y


def iter_labelled_batches(source: RealSource, num_samples: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(samples, labels)`` batches of the first ``num_samples`` items of a dataset, DataLoader or iterable."""
    batches = DataLoader(source, batch_size=batch_size, shuffle=False) if isinstance(source, Dataset) else source
    seen = 0
    for batch in batches:
        x, y = _labelled(batch)
        keep = min(x.shape[0], num_samples - seen)
        seen += keep
        if keep:
            yield x[:keep], y[:keep]
        if seen >= num_samples:
            return


def compute_class_statistics(
    source: RealSource,
    extractor: nn.Module,
    num_classes: int,
    num_samples: int,
    batch_size: int = 100,
    device: Optional[Union[str, torch.device]] = None,
) -> list[RealStatistics]:
    """One :class:`RealStatistics` per class from the first ``num_samples`` labelled real samples (no cache).

    Raises:
        ValueError: a label outside ``[0, num_classes)``, or a class with fewer than 2 real samples.
    """
    moments = [FeatureMoments(extractor_num_features(extractor)) for _ in range(num_classes)]
    for x, y in iter_labelled_batches(source, num_samples, batch_size):
        y = y.long().cpu()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"Intra-class FID: real labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}.")
        with torch.no_grad():
            features = extractor(x.to(device) if device is not None else x).detach().cpu()
        for c in y.unique().tolist():
            moments[c].update(features[y == c])
    counts = [int(m.num_samples) for m in moments]
    short = [c for c, n in enumerate(counts) if n < 2]
    if short:
        raise ValueError(
            f"Intra-class FID: classes {short} have fewer than 2 real samples among the first {num_samples} "
            f"(per-class counts {counts}); raise num_real_samples."
        )
    return [RealStatistics.from_moments(m) for m in moments]


def load_or_compute_class_statistics(
    source: Optional[RealSource],
    extractor: nn.Module,
    num_classes: int,
    num_real_samples: int,
    dataset_key: Optional[str] = None,
    cache: Optional[PathLike] = None,
    batch_size: int = 100,
    device: Optional[Union[str, torch.device]] = None,
) -> list[RealStatistics]:
    """Per-class real statistics from the disk cache, or computed (and cached when ``dataset_key`` is known), as
    :func:`~lightning_regan.fid.stats.load_or_compute_real_statistics` does for the overall ones."""
    num_features = extractor_num_features(extractor)
    key = (statistics_key(f"{dataset_key}:{_PER_CLASS}{num_classes}", extractor_key(extractor), num_real_samples)
           if dataset_key else "")
    path = statistics_path(key, cache) if key else None
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            stats = [RealStatistics.from_dict(s, source="cache") for s in state["classes"]]
            if state["key"] == key and len(stats) == num_classes and all(s.num_features == num_features for s in stats):
                return stats
            log.warning("Per-class FID statistics %s do not match their key; recomputing.", path)
        except Exception as exc:  # truncated, foreign or older file: recompute
            log.warning("Ignoring unreadable per-class FID statistics %s (%s); recomputing.", path, exc)
    if source is None:
        raise ValueError("No real data to compute per-class FID statistics from (and none cached).")
    stats = compute_class_statistics(source, extractor, num_classes, num_real_samples, batch_size, device)
    if path is not None:
        atomic_torch_save({"key": key, "classes": [s.to_dict() for s in stats]}, path)
    return stats


class IntraClassFID:
    """Mean over classes of the FID of generated features of class ``k`` to the real statistics of class ``k``.

    Args:
        class_stats: Real statistics of classes ``0..K-1``.
    """

    def __init__(self, class_stats: Sequence[RealStatistics]) -> None:
        if len(class_stats) < 2:
            raise ValueError(f"IntraClassFID needs the statistics of at least 2 classes, got {len(class_stats)}.")
        self.class_stats = list(class_stats)
        self._moments: dict[torch.device, list[tuple[Tensor, Tensor, Tensor]]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_stats)

    def to_payload(self) -> list[dict[str, Any]]:
        """Plain tensors and numbers (for a broadcast to the other ranks); :meth:`from_payload` reads it back."""
        return [s.to_dict() for s in self.class_stats]

    @classmethod
    def from_payload(cls, payload: Sequence[Mapping[str, Any]]) -> "IntraClassFID":
        return cls([RealStatistics.from_dict(s, source="payload") for s in payload])

    def _real(self, device: torch.device) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per-class real mean, covariance and its square root on ``device`` (computed once per device)."""
        if device not in self._moments:
            rows = []
            for s in self.class_stats:
                cov = s.cov().to(device, torch.float64)
                rows.append((s.mean().to(device, torch.float64), cov, sqrtm_psd(cov)))
            self._moments[device] = rows
        return self._moments[device]

    def per_class(self, features: Tensor, labels: Tensor) -> dict[int, float]:
        """``{class: FID}`` for every class with at least 2 of the generated ``features (N, D)`` (labels ``(N,)``)."""
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"IntraClassFID: {features.shape[0]} features but {labels.shape[0]} labels.")
        f = features.reshape(features.shape[0], -1).double()
        labels = labels.to(f.device)
        out: dict[int, float] = {}
        for c, (mean, cov, root) in enumerate(self._real(f.device)):
            fc = f[labels == c]
            n = fc.shape[0]
            if n < 2:
                continue
            if not bool(torch.isfinite(fc).all()):
                out[c] = math.nan
            elif n <= fc.shape[1]:
                out[c] = float(frechet_distance_low_rank(mean, cov, fc, root))
            else:
                out[c] = float(frechet_distance(mean, cov, fc.mean(0), torch.cov(fc.T), sqrt_sigma1=root))
        return out

    def __call__(self, features: Tensor, labels: Tensor) -> float:
        """The intra-class FID (NaN when no class has 2 generated samples or a generated feature is not finite)."""
        values = list(self.per_class(features, labels).values())
        return sum(values) / len(values) if values else math.nan


__all__ = ["IntraClassFID", "compute_class_statistics", "iter_labelled_batches", "load_or_compute_class_statistics"]

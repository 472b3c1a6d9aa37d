"""FID/KID/MMD evaluation: offline Inception weights, feature extractors, cached real statistics, the metrics."""

from lightning_regan.fid.extractors import (
    ClassifierExtractor,
    IdentityExtractor,
    InceptionExtractor,
    build_extractor,
    extractor_key,
    extractor_name,
)
from lightning_regan.fid.intra import IntraClassFID, compute_class_statistics, load_or_compute_class_statistics
from lightning_regan.fid.metric import FeatureDistances, fid_infinity, kernel_inception_distance
from lightning_regan.fid.mmd import KernelMMD, mmd2_unbiased
from lightning_regan.fid.stats import RealStatistics, compute_real_statistics, load_or_compute_real_statistics
from lightning_regan.fid.weights import (
    InceptionLogitsUnavailable,
    InceptionWeightsError,
    prepare_inception_weights,
    resolve_inception_weights,
)

__all__ = [
    "ClassifierExtractor",
    "FeatureDistances",
    "IdentityExtractor",
    "InceptionExtractor",
    "InceptionLogitsUnavailable",
    "InceptionWeightsError",
    "IntraClassFID",
    "KernelMMD",
    "RealStatistics",
    "build_extractor",
    "compute_class_statistics",
    "compute_real_statistics",
    "extractor_key",
    "extractor_name",
    "fid_infinity",
    "kernel_inception_distance",
    "load_or_compute_class_statistics",
    "load_or_compute_real_statistics",
    "mmd2_unbiased",
    "prepare_inception_weights",
    "resolve_inception_weights",
]

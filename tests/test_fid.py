"""FID subsystem without Inception: maths, cached real statistics, extractors, FIDMonitor, regan-eval.

The DDP scenario runs as a subprocess (``python tests/test_fid.py ddp <out_dir>``), as in test_ddp.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script by the DDP launcher
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TinyD, TinyG  # noqa: E402
from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.callbacks.fid_monitor import FID_KEY, KID_KEY, FIDMonitor  # noqa: E402
from lightning_regan.fid import stats as stats_module  # noqa: E402
from lightning_regan.fid.extractors import (  # noqa: E402
    ClassifierExtractor,
    IdentityExtractor,
    build_extractor,
    extractor_key,
    resolve_extractor_spec,
)
from lightning_regan.fid.metric import FeatureDistances, frechet_distance, kernel_inception_distance, sqrtm_psd  # noqa: E402
from lightning_regan.fid.stats import (  # noqa: E402
    RealStatistics,
    compute_real_statistics,
    load_or_compute_real_statistics,
    statistics_path,
)

LATENT = 4
NUM_SAMPLES = 64
SEED = 3


# ---------------------------------------------------------------------------------------------- helpers
class Projection(nn.Module):
    """A tiny fixed non-linear feature map (stands in for Inception)."""

    def __init__(self, in_dim: int = 2, num_features: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        self.proj = nn.Linear(in_dim, num_features)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.proj.weight.copy_(torch.randn(num_features, in_dim, generator=g))
            self.proj.bias.copy_(torch.randn(num_features, generator=g))
        self.calls = 0
        self.samples_seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.samples_seen += x.shape[0]
        return torch.tanh(self.proj(x.flatten(1).float()))


class Points(L.LightningDataModule):
    """2-D points with a reference dataset and a cache key (the DataModule contract the monitor reads)."""

    shape = (2,)

    def __init__(self, n: int = 256, key: Optional[str] = "points-v1", mean: float = 1.0, labelled: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.data = torch.randn(n, 2, generator=g) * 0.5 + mean
        self.labels = (self.data[:, 0] > mean).long()
        self.key = key
        self.labelled = labelled

    def reference_dataset(self):
        return TensorDataset(self.data, self.labels) if self.labelled else TensorDataset(self.data)

    def cache_key(self) -> Optional[str]:
        return self.key

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.data), batch_size=32, shuffle=True, drop_last=True)


def make_module(ema: Optional[float] = None) -> GANModule:
    torch.manual_seed(0)
    return GANModule(TinyG(LATENT, 2), TinyD(2), n_critic=1, ema_decay=ema)


def fit(module: L.LightningModule, callbacks: list, g_steps: int, datamodule=None, **kw) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    opts = dict(accelerator="cpu", devices=1, max_steps=max_steps_for(g_steps, 1), callbacks=callbacks, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer = L.Trainer(**{**opts, **kw})
    trainer.fit(module, datamodule=datamodule if datamodule is not None else Points())
    return trainer


def fixed_noise(n: int = NUM_SAMPLES, seed: int = SEED) -> Tensor:
    """The documented evaluation noise: torch.randn(num_samples, latent_dim) from a generator seeded ``seed``."""
    return torch.randn(n, LATENT, generator=torch.Generator().manual_seed(seed))


def direct_fid(extractor: nn.Module, real: Tensor, fake: Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------- maths
def gaussian_stats(x: Tensor) -> RealStatistics:
    return compute_real_statistics(x, IdentityExtractor(x.shape[1]), x.shape[0], batch_size=4096)


def distance(real: Tensor, fake: Tensor, **kw) -> dict[str, float]:
    metric = FeatureDistances(real.shape[1], **kw)
    stats = gaussian_stats(real)
    if kw.get("kid"):
        stats.features = real.float()
    metric.set_real(stats)
    metric.update(fake)
    return metric.compute()


def test_identity_fid_of_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 2
    mu = torch.tensor([1.5, -0.5])
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    shifted = torch.randn(n, d, generator=g, dtype=torch.float64) + mu
    # N(0, I) vs N(mu, I): ||mu||^2 = 2.5
    assert distance(real, shifted)["fid"] == pytest.approx(float(mu.square().sum()), abs=0.06)
    # N(0, I) vs N(0, diag(1, 4)): Tr(S1 + S2 - 2 (S1 S2)^1/2) = 0 + (1 + 4 - 2 * 2) = 1
    scaled = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    assert distance(real, scaled)["fid"] == pytest.approx(1.0, abs=0.06)
    # same distribution: close to 0
    same = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert distance(real, same)["fid"] < 0.01


def test_kid_is_near_zero_for_same_distribution_and_seeded():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(400, 8, generator=g)
    same = torch.randn(400, 8, generator=g)
    shifted = torch.randn(400, 8, generator=g) + 1.0
    a = kernel_inception_distance(real, same, subsets=20, subset_size=200, seed=0)
    b = kernel_inception_distance(real, shifted, subsets=20, subset_size=200, seed=0)
    assert abs(a[0]) < 0.05 < b[0]
    assert kernel_inception_distance(real, shifted, subsets=20, subset_size=200, seed=0) == b
    # subset_size larger than the samples is clipped, not an error; whole sets: one value, std 0
    from torchmetrics.image.kid import poly_mmd

    whole = kernel_inception_distance(real[:10], same[:10], subsets=3, subset_size=1000)
    assert whole == (pytest.approx(float(poly_mmd(real[:10].double(), same[:10].double()))), 0.0)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_distances_match_torchmetrics_fid_and_kid():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(300, 5, generator=g), torch.randn(200, 5, generator=g) * 1.3 + 0.2
    ours = distance(real, fake, kid=True, kid_subsets=50, kid_subset_size=100)
    assert ours["fid"] == pytest.approx(direct_fid(IdentityExtractor(5), real, fake), rel=1e-5)
    kid = KernelInceptionDistance(feature=IdentityExtractor(5), subsets=50, subset_size=100)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    # different random subsets, same estimator: agree within the subset noise
    assert ours["kid_mean"] == pytest.approx(float(kid.compute()[0]), abs=3 * ours["kid_std"] / math.sqrt(50) + 1e-3)


def test_nan_samples_give_nan_not_crash():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50, 3, generator=g)
    fake = torch.full((50, 3), float("nan"))
    out = distance(real, fake, kid=True, kid_subsets=2, kid_subset_size=10)
    assert math.isnan(out["fid"]) and math.isnan(out["kid_mean"])


@pytest.mark.parametrize("n", [500, 6])  # full rank, and rank-deficient (fewer samples than features)
def test_frechet_distance_equals_torchmetrics_formula(n):
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(n)
    d = 40
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(n + 3, d, generator=g, dtype=torch.float64) * 0.7 + 0.3
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), a.T.cov(), b.T.cov()
    ours = frechet_distance(mu1, s1, mu2, s2)
    reference = _compute_fid(mu1, s1, mu2, s2)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6, abs=1e-6)
    assert float(frechet_distance(mu1, s1, mu2, s2, sqrt_sigma1=sqrtm_psd(s1))) == pytest.approx(float(ours), rel=1e-9)
    assert float(frechet_distance(mu1, s1, mu1, s1)) == pytest.approx(0.0, abs=1e-6 * float(s1.trace()))


# ---------------------------------------------------------------------------------------------- statistics cache
def test_real_statistics_cached_and_reused(tmp_path):
    dm = Points()
    extractor = Projection()
    first = load_or_compute_real_statistics(dm.reference_dataset(), extractor, 200, dataset_key=dm.cache_key(), cache=tmp_path)
    assert first.source == "computed" and first.num_samples == 200 and extractor.samples_seen == 200
    path = statistics_path(first.key, tmp_path)
    assert path.is_file()
    assert torch.load(path, weights_only=True)["num_samples"] == 200  # plain tensors: weights_only loads it

    before = stats_module.encoded_real_samples
    second = load_or_compute_real_statistics(dm.reference_dataset(), extractor, 200, dataset_key=dm.cache_key(), cache=tmp_path)
    assert second.source == "cache"
    assert extractor.samples_seen == 200 and stats_module.encoded_real_samples == before  # no real image re-encoded
    torch.testing.assert_close(second.features_cov_sum, first.features_cov_sum)
    # exactly torchmetrics' real_* states
    from torchmetrics.image.fid import FrechetInceptionDistance

    tm = FrechetInceptionDistance(feature=Projection())
    tm.update(dm.data[:200], real=True)
    torch.testing.assert_close(second.features_sum, tm.real_features_sum)
    torch.testing.assert_close(second.features_cov_sum, tm.real_features_cov_sum)


@pytest.mark.parametrize("change", ["dataset", "num_real_samples", "extractor"])
def test_changed_key_recomputes(tmp_path, change):
    dm = Points()
    base = load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 100, dataset_key="points-v1", cache=tmp_path)
    kwargs: dict[str, Any] = dict(dataset_key="points-v1", num_real_samples=100, extractor=Projection())
    if change == "dataset":
        kwargs["dataset_key"] = "points-v2"
    elif change == "num_real_samples":
        kwargs["num_real_samples"] = 120
    else:
        kwargs["extractor"] = Projection(seed=1)  # other weights -> other key
    extractor = kwargs["extractor"]
    again = load_or_compute_real_statistics(dm.reference_dataset(), extractor, kwargs["num_real_samples"],
                                            dataset_key=kwargs["dataset_key"], cache=tmp_path)
    assert again.source == "computed" and extractor.samples_seen == kwargs["num_real_samples"]
    assert again.key != base.key
    assert len(list((tmp_path / "fid_stats").glob("*.pt"))) == 2


def test_corrupt_cache_file_is_recomputed(tmp_path):
    dm = Points()
    first = load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 50, dataset_key="k", cache=tmp_path)
    statistics_path(first.key, tmp_path).write_bytes(b"not a torch file")
    again = load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 50, dataset_key="k", cache=tmp_path)
    assert again.source == "computed"
    torch.testing.assert_close(again.features_sum, first.features_sum)


def test_kid_needs_features_so_cache_without_them_is_recomputed(tmp_path):
    dm = Points()
    load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 50, dataset_key="k", cache=tmp_path)
    with_features = load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 50, dataset_key="k",
                                                    cache=tmp_path, keep_features=True)
    assert with_features.source == "computed" and with_features.features.shape == (50, 3)
    reused = load_or_compute_real_statistics(dm.reference_dataset(), Projection(), 50, dataset_key="k", cache=tmp_path, keep_features=True)
    assert reused.source == "cache" and reused.features.shape == (50, 3)


def test_extractor_key_depends_on_weights():
    assert extractor_key(Projection(seed=0)) == extractor_key(Projection(seed=0))
    assert extractor_key(Projection(seed=0)) != extractor_key(Projection(seed=1))
    assert extractor_key(IdentityExtractor(2)) == "identity-2"


# ---------------------------------------------------------------------------------------------- extractors
def test_build_extractor_specs():
    dm = Points()
    assert resolve_extractor_spec("auto", dm) == "identity"  # 1-D samples
    image_dm = type("ImageDM", (), {"shape": (1, 28, 28)})()
    assert resolve_extractor_spec("auto", image_dm) == "inception"
    image_dm.fid_feature_extractor = "classifier"
    assert resolve_extractor_spec("auto", image_dm) == "classifier"
    assert isinstance(build_extractor("identity", dm), IdentityExtractor)
    custom = Projection()
    assert build_extractor(custom) is custom
    with pytest.raises(ValueError, match="feature_extractor must be one of"):
        build_extractor("vgg", dm)
    with pytest.raises(ValueError, match="labelled"):
        build_extractor("classifier", Points(labelled=False))
    with pytest.raises(ValueError, match=r"IdentityExtractor\(dim=2\)"):
        IdentityExtractor(2)(torch.zeros(3, 4))


def digits_tensors() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # 16 grey levels -> [-1, 1]
    return x, torch.tensor(d.target)


def test_classifier_extractor_on_digits_trains_once_and_separates_quality(tmp_path):
    x, y = digits_tensors()
    data = TensorDataset(x, y)
    start = time.perf_counter()
    extractor = ClassifierExtractor.fit(data, dataset_key="sklearn-digits", cache=tmp_path)
    trained_s = time.perf_counter() - start
    assert extractor.accuracy > 0.9, extractor.accuracy  # a feature space that knows digits
    assert extractor.num_features == 64 and extractor.name == "classifier"
    cached = list((tmp_path / "classifiers").glob("*.pt"))
    assert len(cached) == 1
    start = time.perf_counter()
    again = ClassifierExtractor.fit(data, dataset_key="sklearn-digits", cache=tmp_path)
    assert time.perf_counter() - start < trained_s
    assert again.cache_key == extractor.cache_key
    torch.testing.assert_close(again(x[:10]), extractor(x[:10]))
    # deterministic: training again from scratch (no cache) gives the same weights
    fresh = ClassifierExtractor.fit(data, dataset_key=None)
    torch.testing.assert_close(fresh(x[:10]), extractor(x[:10]))

    # FID in this space: held-out real digits are close, noise and blurred digits are far
    stats = compute_real_statistics(x[:900], extractor, 900)

    def fid(samples: Tensor) -> float:
        metric = FeatureDistances(extractor.num_features)
        metric.set_real(stats)
        metric.update(extractor(samples))
        return metric.compute()["fid"]

    g = torch.Generator().manual_seed(0)
    real_fid = fid(x[900:])
    noise_fid = fid(torch.rand(897, 1, 8, 8, generator=g) * 2 - 1)
    blurred = torch.nn.functional.avg_pool2d(x[900:], 3, stride=1, padding=1)
    blur_fid = fid(blurred)
    assert real_fid < blur_fid < noise_fid
    assert real_fid * 5 < noise_fid


# ---------------------------------------------------------------------------------------------- FIDMonitor
def test_monitor_value_equals_torchmetrics_fid(tmp_path):
    module = make_module(ema=0.9)
    extractor = Projection()
    monitor = FIDMonitor(every_n_g_steps=3, num_samples=NUM_SAMPLES, num_real_samples=200, feature_extractor=extractor,
                         batch_size=16, cache_dir=tmp_path, seed=SEED, verbose=False)
    trainer = fit(module, [monitor], g_steps=6)
    assert [g for g, _ in monitor.history] == [3, 6]
    assert monitor.evaluations == 2 and monitor.eval_time_s > 0
    assert monitor.extractor_name == "Projection"
    # the last evaluation saw the final generator (EMA copy): recompute it directly with torchmetrics
    fake = module.generate(z=fixed_noise())
    expected = direct_fid(Projection(), Points().data[:200], fake)
    assert monitor.last_fid == pytest.approx(expected, rel=1e-4)
    assert float(trainer.callback_metrics[FID_KEY]) == monitor.last_fid == monitor.history[-1][1]
    assert monitor.history[0][1] != monitor.history[1][1]  # the generator moved between evaluations
    # the module holds no metric or extractor (nothing of it in checkpoints)
    assert not any("fid" in k or "proj" in k for k in module.state_dict())


def test_monitor_second_run_encodes_no_real_image(tmp_path):
    dm = Points(key="points-cache-test")
    first = FIDMonitor(every_n_g_steps=2, num_samples=32, feature_extractor=Projection(), cache_dir=tmp_path, verbose=False)
    fit(make_module(), [first], g_steps=2, datamodule=dm)
    assert first.real_stats.source == "computed"
    before = stats_module.encoded_real_samples
    extractor = Projection()
    second = FIDMonitor(every_n_g_steps=2, num_samples=32, feature_extractor=extractor, cache_dir=tmp_path, verbose=False)
    fit(make_module(), [second], g_steps=2, datamodule=dm)
    assert second.real_stats.source == "cache"
    assert stats_module.encoded_real_samples == before
    assert extractor.samples_seen == 32  # only the generated samples
    assert second.history == first.history  # same weights, same fixed noise, same statistics


def test_monitor_with_kid_identity_and_plain_dataloaders(tmp_path):
    """No DataModule: real data from the training loader; identity features; KID logged too."""
    g = torch.Generator().manual_seed(5)
    points = torch.randn(256, 2, generator=g)
    loader = DataLoader(TensorDataset(points), batch_size=32, shuffle=False, drop_last=True)
    monitor = FIDMonitor(every_n_g_steps=2, num_samples=100, num_real_samples=128, feature_extractor=IdentityExtractor(2),
                         kid=True, kid_subsets=10, kid_subset_size=50, cache_dir=tmp_path, verbose=False)
    module = make_module()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(4, 1), callbacks=[monitor], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert [g for g, _ in monitor.kid_history] == [2, 4]
    assert float(trainer.callback_metrics[KID_KEY]) == pytest.approx(monitor.last_kid)
    expected = direct_fid(IdentityExtractor(2), points[:128], module.generate(z=torch.randn(100, LATENT, generator=torch.Generator().manual_seed(0))))
    assert monitor.last_fid == pytest.approx(expected, rel=1e-4)
    assert not list(tmp_path.glob("fid_stats/*.pt"))  # no dataset key: nothing cached


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_monitor_evaluate_on_train_end_and_logger(tmp_path):
    """Every evaluation reaches the logger, although log_every_n_steps (50) is larger than the run."""
    from lightning.pytorch.loggers import CSVLogger

    monitor = FIDMonitor(every_n_g_steps=4, num_samples=32, feature_extractor=Projection(), evaluate_on_train_end=True,
                         cache_dir=tmp_path, verbose=False)
    logger = CSVLogger(str(tmp_path), name="logs")
    fit(make_module(), [monitor], g_steps=6, logger=logger)
    assert [g for g, _ in monitor.history] == [4, 6]
    logger.save()
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    fids = [r.split(",")[header.index(FID_KEY)] for r in rows[1:]]
    assert len([f for f in fids if f]) == 2

    again = FIDMonitor(every_n_g_steps=3, num_samples=32, feature_extractor=Projection(), evaluate_on_train_end=True,
                       cache_dir=tmp_path, verbose=False)
    fit(make_module(), [again], g_steps=6)
    assert [g for g, _ in again.history] == [3, 6]  # step 6 was evaluated at its batch end: not twice


def test_monitor_state_dict_roundtrip_and_no_duplicate_after_resume(tmp_path):
    monitor = FIDMonitor(every_n_g_steps=2, num_samples=32, feature_extractor=Projection(), cache_dir=tmp_path, verbose=False)
    fit(make_module(), [monitor], g_steps=4)
    state = monitor.state_dict()
    json.dumps(state)  # plain data
    resumed = FIDMonitor(every_n_g_steps=2, num_samples=32, feature_extractor=Projection(), cache_dir=tmp_path, verbose=False)
    resumed.load_state_dict(state)
    assert resumed.history == monitor.history and resumed.eval_time_s == monitor.eval_time_s
    assert resumed.last_fid == monitor.last_fid and resumed.evaluations == 2

    # a run resumed at G step 4 whose first batch is a D-only step must not re-evaluate step 4
    class Stalled:
        g_steps = 4
        g_step_taken = True  # the G-step event fires with the restored step

    resumed._metric = object()  # would fail if evaluate() were called
    resumed.on_train_batch_end(None, Stalled(), None, None, 0)
    assert len(resumed.history) == 2


def test_monitor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        FIDMonitor(num_samples=1)
    with pytest.raises(ValueError, match="every_n_g_steps"):
        FIDMonitor(every_n_g_steps=-1)
    with pytest.raises(ValueError, match="feature_extractor"):
        FIDMonitor(feature_extractor="vgg16")
    with pytest.raises(ValueError, match="batch_size"):
        FIDMonitor(batch_size=0)


def test_monitor_missing_inception_weights_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.delenv("REGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("REGAN_INCEPTION_ALLOW_DOWNLOAD", raising=False)
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    image_dm = type("ImageDM", (Points,), {"shape": (1, 8, 8)})()
    module = make_module()
    monitor = FIDMonitor(every_n_g_steps=1, num_samples=8, feature_extractor="inception", verbose=False)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="regan-fid-weights"):
        fit(module, [monitor], g_steps=2, datamodule=image_dm)
    assert time.perf_counter() - start < 10
    assert module.g_steps == 0


# ---------------------------------------------------------------------------------------------- DDP
WORLD = 2


def scenario_ddp(out: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    monitor = FIDMonitor(every_n_g_steps=2, num_samples=NUM_SAMPLES + 1, num_real_samples=200, feature_extractor=Projection(),
                         batch_size=16, kid=True, kid_subsets=5, kid_subset_size=30, cache_dir=out / "cache", seed=SEED,
                         verbose=False)
    module = make_module()
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo"),
        max_steps=max_steps_for(4, 1), callbacks=[monitor], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=Points())
    rank = trainer.global_rank
    torch.save({"history": monitor.history, "kid_history": monitor.kid_history,
                "logged": float(trainer.callback_metrics[FID_KEY]),
                "generator": {k: v.detach().clone() for k, v in module.generator.state_dict().items()}},
               out / f"rank{rank}.pt")


def scenario_ddp_failing_setup(out: Path) -> None:
    """Rank zero fails while preparing (classifier on unlabelled data): every rank must stop, none may hang."""
    from lightning.pytorch.strategies import DDPStrategy

    monitor = FIDMonitor(every_n_g_steps=2, num_samples=16, feature_extractor="classifier", cache_dir=out / "cache",
                         verbose=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo"),
        max_steps=max_steps_for(4, 1), callbacks=[monitor], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(make_module(), datamodule=Points(labelled=False))


def run_ddp(scenario: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), scenario, str(out)], env=env,
                          capture_output=True, text=True, timeout=180)


def test_ddp_failing_setup_stops_every_rank_without_hanging(tmp_path):
    start = time.perf_counter()
    proc = run_ddp("ddp_failing_setup", tmp_path)
    assert proc.returncode != 0
    assert "labelled" in proc.stderr, proc.stderr[-3000:]  # rank zero's own error
    assert "failed on another rank" in proc.stderr  # rank one was told instead of waiting forever
    assert time.perf_counter() - start < 120


def test_ddp_every_rank_logs_the_single_process_value(tmp_path):
    proc = run_ddp("ddp", tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert [g for g, _ in r0["history"]] == [2, 4]
    assert r0["history"] == r1["history"] and r0["kid_history"] == r1["kid_history"]
    assert r0["logged"] == r1["logged"] == r0["history"][-1][1]
    # each rank generated half of the 65 samples; the synced value is the FID of all of them
    generator = TinyG(LATENT, 2)
    generator.load_state_dict(r0["generator"])
    with torch.no_grad():
        fake = generator.eval()(fixed_noise(NUM_SAMPLES + 1))
    expected = direct_fid(Projection(), Points().data[:200], fake)
    assert r0["history"][-1][1] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------------------------- regan-eval
def test_regan_eval_image_folder(tmp_path, monkeypatch):
    """--images against a dataset, with the classifier features and the statistics cache."""
    from PIL import Image

    from lightning_regan.cli import evaluate as ev

    x, y = digits_tensors()

    class Digits(L.LightningDataModule):
        shape = (1, 8, 8)
        fid_feature_extractor = "classifier"

        def reference_dataset(self):
            return TensorDataset(x, y)

        def cache_key(self):
            return "test-digits-v1"

    monkeypatch.setattr(ev, "build_datamodule", lambda name, root=None, overrides=(), **_: Digits())
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        arr = ((x[1000 + i, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        Image.fromarray(arr, mode="L").save(folder / f"{i:03d}.png")
    out = tmp_path / "fid.json"
    args = ["--images", str(folder), "--data", "digits", "--num-real-samples", "500", "--kid", "--kid-subsets", "5",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert ev.main(args) == 0
    result = json.loads(out.read_text())
    assert result["feature_extractor"] == "classifier" and result["num_samples"] == 40 and result["num_real_samples"] == 500
    assert result["real_statistics"] == "computed" and result["classifier_accuracy"] > 0.9
    # the same numbers, computed directly from the cached classifier
    extractor = ClassifierExtractor.fit(TensorDataset(x, y), dataset_key="test-digits-v1", cache=tmp_path / "cache")
    stats = compute_real_statistics(x[:500], extractor, 500)
    metric = FeatureDistances(64)
    metric.set_real(stats)
    metric.update(extractor(x[1000:1040]))
    assert result["fid"] == pytest.approx(metric.compute()["fid"], rel=1e-3)

    assert ev.main(args) == 0
    assert json.loads(out.read_text())["real_statistics"] == "cache"

    (folder / "bad.png").write_bytes(b"not an image")
    assert ev.main(args) == 2


def test_regan_eval_reproduces_the_monitor_value(tmp_path):
    """regan-eval's sampling (seeded fixed noise) and statistics give the FID the monitor logged."""
    from lightning_regan.cli import evaluate as ev

    module = make_module(ema=0.9)
    monitor = FIDMonitor(every_n_g_steps=3, num_samples=NUM_SAMPLES, num_real_samples=100, feature_extractor=Projection(),
                         batch_size=16, cache_dir=tmp_path, seed=SEED, verbose=False)
    fit(module, [monitor], g_steps=3)
    result = ev.evaluate(ev.checkpoint_batches(module, NUM_SAMPLES, SEED, batch_size=10), Points(), num_real_samples=100,
                         cache_dir=str(tmp_path), extractor=Projection())
    assert result["real_statistics"] == "cache"  # the monitor's cached statistics
    assert result["num_samples"] == NUM_SAMPLES and result["feature_extractor"] == "Projection"
    assert result["fid"] == pytest.approx(monitor.last_fid, rel=1e-5)


@pytest.mark.skipif(not (REPO_ROOT / "conf" / "data" / "digits.yaml").is_file(), reason="digits data config not available")
def test_regan_eval_checkpoint_of_a_digits_run(tmp_path, capsys):
    """A checkpoint as regan-train writes it (run config inside), evaluated with the dataset it names."""
    from omegaconf import OmegaConf, open_dict

    from lightning_regan.cli import evaluate as ev
    from lightning_regan.builders import build_datamodule, build_models, build_module
    from lightning_regan.config import compose_config

    cfg = compose_config(["data=digits", "model=mlp", "max_g_steps=4"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)
    module.run_config = {**OmegaConf.to_container(cfg, resolve=True), "data_shape": list(datamodule.shape)}
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps_for(4, 1), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    out = tmp_path / "eval.json"
    args = [str(ckpt), "-n", "100", "--num-real-samples", "300", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert ev.main(args) == 0
    assert "FID" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["feature_extractor"] == "classifier"  # the digits data module's choice
    assert result["num_samples"] == 100 and result["num_real_samples"] == 300 and math.isfinite(result["fid"])
    # same noise convention as FIDMonitor: the checkpoint's EMA/raw generator decoded from randn(seed 0)
    assert ev.main(args) == 0
    assert json.loads(out.read_text())["fid"] == result["fid"]


def test_regan_eval_argument_errors(capsys, tmp_path):
    from lightning_regan.cli import evaluate as ev

    with pytest.raises(SystemExit):
        ev.main([])
    with pytest.raises(SystemExit):
        ev.main(["--images", "somewhere"])  # needs --data
    assert ev.main(["does-not-exist.ckpt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert ev.main(["--images", str(tmp_path), "--data", "no_such_dataset"]) == 2
    assert "no_such_dataset" in capsys.readouterr().err


if __name__ == "__main__":
    {"ddp": scenario_ddp, "ddp_failing_setup": scenario_ddp_failing_setup}[sys.argv[1]](Path(sys.argv[2]))


# ---------------------------------------------------------------------------------------------- torchmetrics' states
class _Points(nn.Module):
    num_features = 3

    def forward(self, x: Tensor) -> Tensor:
        return x.float()


def test_our_statistics_are_torchmetrics_fid_states_and_why_the_real_side_is_kept_apart():
    """FeatureMoments/RealStatistics hold exactly torchmetrics FID's states; the reason we do not keep the real side
    in torchmetrics' FrechetInceptionDistance: its sync reduces the real states too, so real statistics that every
    rank holds (loaded from the disk cache by each) would be counted world_size times."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from lightning_regan.fid.stats import FeatureMoments, RealStatistics, compute_real_statistics

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 3, generator=g), torch.randn(40, 3, generator=g) + 0.5
    tm = FrechetInceptionDistance(feature=_Points(), reset_real_features=False)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    ours_fake = FeatureMoments(3)
    ours_fake.update(fake)
    ours_real = compute_real_statistics(real, _Points(), 50, batch_size=16)
    assert torch.equal(ours_fake.features_sum, tm.fake_features_sum)
    assert torch.allclose(ours_fake.features_cov_sum, tm.fake_features_cov_sum)
    assert int(ours_fake.num_samples) == int(tm.fake_features_num_samples)
    assert torch.allclose(ours_real.features_sum, tm.real_features_sum)
    assert torch.allclose(ours_real.features_cov_sum, tm.real_features_cov_sum)
    assert ours_real.num_samples == int(tm.real_features_num_samples)
    assert isinstance(RealStatistics.from_moments(ours_fake), RealStatistics)
    assert float(tm.compute()) == pytest.approx(
        float(frechet_distance(ours_real.mean(), ours_real.cov(), *ours_fake.compute()[:2])), rel=1e-6)

    # Two ranks with the same real statistics and half of the generated samples each:
    two_ranks = lambda x, group=None: [x, x.clone()]  # noqa: E731  (each rank's state, as all_gather returns it)
    tm.sync(dist_sync_fn=two_ranks, distributed_available=lambda: True)
    assert int(tm.real_features_num_samples) == 100  # the real side was reduced too: 50 real samples counted twice
    tm.unsync()
    ours_fake.sync(dist_sync_fn=two_ranks, distributed_available=lambda: True)
    assert int(ours_fake.num_samples) == 80 and ours_real.num_samples == 50  # only the generated side is reduced
    ours_fake.unsync()


def test_monitor_evaluates_a_fine_tunes_starting_generator_at_g_step_zero(tmp_path):
    """A module started from trained weights (``initialized_from``) is evaluated before its first step; BestGenerator
    keeps that generator and EarlyTermination's rules see the evaluation at G step 0."""
    from lightning_regan import BestGenerator, EarlyTermination, Trend

    def run(initialized_from, **kw):
        module = make_module()
        module.initialized_from = initialized_from
        start = {k: v.clone() for k, v in module.generator.state_dict().items()}
        monitor = FIDMonitor(every_n_g_steps=3, num_samples=32, feature_extractor=Projection(), cache_dir=tmp_path,
                             mmd=False, verbose=False, **kw)
        best = BestGenerator(monitor=FID_KEY, restore="never", top_k=3, verbose=False)
        stopping = EarlyTermination(rules=[Trend(monitor=FID_KEY)], verbose=False)
        fit(module, [monitor, best, stopping], g_steps=6)
        return monitor, best, stopping, start

    monitor, best, stopping, start = run({"path": "pretrained.ckpt"})
    assert [g for g, _ in monitor.history] == [0, 3, 6]
    assert stopping.states["trend"].history[0][0] == 0 and stopping.states["trend"].starts_trained
    kept = {c["g_step"]: c["weights"] for c in best.candidates}  # all three evaluations are kept (top_k=3)
    assert sorted(kept) == [0, 3, 6] and all(torch.equal(kept[0][k], v) for k, v in start.items())
    assert [g for g, _ in run(None)[0].history] == [3, 6]
    assert [g for g, _ in run(None, evaluate_on_train_start=True)[0].history] == [0, 3, 6]
    assert [g for g, _ in run({"path": "x"}, evaluate_on_train_start=False)[0].history] == [3, 6]
    with pytest.raises(ValueError, match="evaluate_on_train_start"):
        FIDMonitor(evaluate_on_train_start="yes")

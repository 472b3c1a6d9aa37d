"""Precision/recall and the FID's measurement noise (lightning_regan.fid.coverage), and FIDMonitor logging them."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyD, TinyG  # noqa: E402
from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.callbacks.fid_monitor import FID_STD_KEY, PRECISION_KEY, RECALL_KEY, FIDMonitor  # noqa: E402
from lightning_regan.fid.coverage import fid_bootstrap_std, knn_radii, precision_recall  # noqa: E402
from lightning_regan.fid.extractors import IdentityExtractor  # noqa: E402
from lightning_regan.fid.metric import frechet_distance  # noqa: E402


def mixture(n: int, modes: int, seed: int, spread: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)])
    idx = torch.randint(modes, (n,), generator=g)
    return centres[idx] * 2 + spread * torch.randn(n, 2, generator=g)


def test_knn_radii_is_the_distance_to_the_kth_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_precision_recall_tell_quality_from_coverage():
    real = mixture(800, 8, seed=0)
    same = precision_recall(real, mixture(800, 8, seed=1))
    assert same[0] > 0.9 and same[1] > 0.9
    collapsed = precision_recall(real, mixture(800, 2, seed=2))  # 2 of 8 modes: real-looking, poor coverage
    assert collapsed[0] > 0.9 and collapsed[1] < 0.35
    blurred = precision_recall(real, mixture(800, 8, seed=3, spread=1.0))  # covers, but mostly off the data
    assert blurred[0] < 0.5 and blurred[1] > 0.8
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    nan = precision_recall(real, torch.full((10, 2), math.nan))
    assert math.isnan(nan[0]) and math.isnan(nan[1])


def test_precision_recall_reuses_the_real_radii():
    """The monitor computes the real side's radii once per run: passing them gives the very same figures."""
    real, fake = mixture(600, 8, seed=0), mixture(500, 3, seed=1)
    radii = knn_radii(real.double(), 3)
    assert precision_recall(real, fake, 3, real_radii=radii) == precision_recall(real, fake, 3)
    with pytest.raises(ValueError, match="real_radii"):
        precision_recall(real, fake, 3, real_radii=radii[:10])


def test_precision_recall_refuse_bad_inputs():
    with pytest.raises(ValueError, match="widths differ"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=0)
    with pytest.raises(ValueError, match="N >= 4"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2))


def test_bootstrap_std_estimates_the_spread_of_the_fid_over_fresh_samples():
    """The bootstrap std of one draw is close to the std of the FID over 40 independent draws."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(5000, 4, generator=g, dtype=torch.float64)
    mu, sigma = real.mean(0), torch.cov(real.T)

    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(400, 4, generator=gen, dtype=torch.float64) * 1.3 + 0.3

    fids = [float(frechet_distance(mu, sigma, f.mean(0), torch.cov(f.T))) for f in map(draw, range(100, 140))]
    actual = statistics.stdev(fids)
    estimates = [fid_bootstrap_std(mu, sigma, draw(s), num_draws=30, seed=s) for s in range(3)]
    for estimate in estimates:
        assert 0.5 * actual < estimate < 2.0 * actual
    more = torch.cat([draw(s) for s in range(200, 210)])  # 10x the samples: about sqrt(10)x less noise
    assert fid_bootstrap_std(mu, sigma, more, num_draws=30) < 0.6 * statistics.fmean(estimates)
    assert math.isnan(fid_bootstrap_std(mu, sigma, torch.full((5, 4), math.nan)))
    with pytest.raises(ValueError, match="num_draws"):
        fid_bootstrap_std(mu, sigma, draw(0), num_draws=1)


def test_monitor_logs_noise_precision_and_recall_with_each_evaluation(tmp_path):
    points = mixture(256, 8, seed=4)
    loader = DataLoader(TensorDataset(points), batch_size=32, shuffle=False, drop_last=True)
    monitor = FIDMonitor(every_n_g_steps=2, num_samples=100, num_real_samples=200, feature_extractor=IdentityExtractor(2),
                         noise_draws=5, precision_recall=True, cache_dir=tmp_path, verbose=False)
    torch.manual_seed(0)
    module = GANModule(TinyG(4, 2), TinyD(2), n_critic=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(4, 1), callbacks=[monitor], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    assert [row["g_step"] for row in monitor.extra_history] == [2, 4]
    last = monitor.extra_history[-1]
    assert last["fid_std"] > 0 and 0 <= last["precision"] <= 1 and 0 <= last["recall"] <= 1
    for key, name in ((FID_STD_KEY, "fid_std"), (PRECISION_KEY, "precision"), (RECALL_KEY, "recall")):
        assert float(trainer.callback_metrics[key]) == pytest.approx(last[name], rel=1e-6)
    assert float(trainer.callback_metrics["val/fid_g_step"]) == 4.0  # published together with val/fid
    # summary.json gets them from the monitor's own summary_fields (RunSummary reads no other callback).
    assert monitor.summary_fields(trainer, module)["coverage_history"] == monitor.extra_history
    # The same numbers from the pure functions on the monitor's own samples and real features.
    z = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    fake = module.generate(z=z)
    expected = precision_recall(points[:200], fake)
    assert (last["precision"], last["recall"]) == pytest.approx(expected, abs=1e-6)
    state = monitor.state_dict()
    again = FIDMonitor(every_n_g_steps=2, num_samples=100, feature_extractor=IdentityExtractor(2), verbose=False)
    again.load_state_dict(state)
    assert again.extra_history == monitor.extra_history
    with pytest.raises(ValueError, match="noise_draws"):
        FIDMonitor(noise_draws=1)

"""The decision signals of issue 20: RBF-mixture MMD² for points, bias-aware estimators for feature spaces."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]

from helpers import TinyD, TinyG  # noqa: E402
from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.callbacks.fid_monitor import FID_KEY, MMD_KEY, FIDMonitor  # noqa: E402
from lightning_regan.config import compose_config  # noqa: E402
from lightning_regan.data import GaussianMixtureDataModule  # noqa: E402
from lightning_regan.data.gaussians import ring_centers, sample_mixture  # noqa: E402
from lightning_regan.fid.metric import FeatureDistances, fid_infinity, frechet_distance, kernel_inception_distance  # noqa: E402
from lightning_regan.fid.mmd import KernelMMD, mmd2_unbiased, rbf_bandwidths, rbf_kernel_sum  # noqa: E402
from lightning_regan.fid.stats import accumulate  # noqa: E402

CENTERS = ring_centers(8, 2.0)
STD = 0.02


def ring(n: int, g: torch.Generator) -> Tensor:
    return sample_mixture(CENTERS, STD, n, g)[0]


def smeared_ring(n: int, g: torch.Generator) -> Tensor:
    """The ring blurred along its circle: uniform angle, the modes' radial spread. Same mean and covariance."""
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 2.0 + STD * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


def blurred_ring(n: int, g: torch.Generator) -> Tensor:
    """The ring convolved with an isotropic Gaussian of std 0.2 (ten times the modes' width)."""
    return ring(n, g) + 0.2 * torch.randn(n, 2, generator=g)


def distances(real: Tensor, fake: Tensor) -> dict[str, float]:
    metric = FeatureDistances(2, mmd=True)
    stats = accumulate(real)
    stats.features = real
    metric.set_real(stats)
    metric.update(fake)
    return metric.compute()


# ---------------------------------------------------------------------------------------------- points
@pytest.mark.parametrize("blur", [smeared_ring, blurred_ring])
def test_mmd_scores_a_blurred_ring_worse_where_identity_fid_cannot_tell(blur):
    """Three draws of 1,500 points: the blur's MMD² is far above the sharp ring's in every draw, while identity FID
    gives both about the same small value (it compares means and covariances only)."""
    g = torch.Generator().manual_seed(0)
    real = ring(1500, g)
    for _ in range(3):
        sharp, blurred = distances(real, ring(1500, g)), distances(real, blur(1500, g))
        assert abs(sharp["mmd"]) < 0.002 and blurred["mmd"] > 0.02
        assert blurred["mmd"] > 10 * max(sharp["mmd"], 0.002)
        # identity FID: both within the same small band, neither clearly worse
        assert sharp["fid"] < 0.02 and blurred["fid"] < 0.02
        assert abs(blurred["fid"] - sharp["fid"]) < 0.01


def test_mmd_is_unbiased_and_the_v_statistic_is_not():
    """Two samples of one distribution: the mean over 300 draws of the U-statistic is 0 within 3 standard errors
    (and |mean| < 5e-4), while the biased V-statistic (diagonal kept) is clearly positive."""
    g = torch.Generator().manual_seed(1)
    bandwidths = rbf_bandwidths(ring(2000, g))
    u, v = [], []
    for _ in range(300):
        x, y = ring(100, g), ring(100, g)
        u.append(float(mmd2_unbiased(x, y, bandwidths)))
        v.append(float((rbf_kernel_sum(x, x, bandwidths) + rbf_kernel_sum(y, y, bandwidths)
                        - 2 * rbf_kernel_sum(x, y, bandwidths)) / 100 ** 2))
    mean_u, se_u = statistics.mean(u), statistics.stdev(u) / math.sqrt(len(u))
    assert abs(mean_u) < 3 * se_u and abs(mean_u) < 5e-4
    assert statistics.mean(v) > 10 * se_u


def test_kernel_mmd_metric_matches_the_function_and_caches_the_real_term():
    g = torch.Generator().manual_seed(2)
    real, fake = ring(300, g), blurred_ring(200, g)
    metric = KernelMMD(chunk=64)
    metric.set_real(real)
    for part in fake.split(70):
        metric.update(part)
    expected = mmd2_unbiased(real, fake, metric.bandwidths)
    assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    metric.reset()  # the real side stays: no set_real needed again
    metric.update(torch.full((5, 2), float("nan")))
    assert math.isnan(float(metric.compute()))
    with pytest.raises(ValueError, match="positive"):
        KernelMMD(scales=[0.5, -1])
    with pytest.raises(ValueError, match="identical"):
        KernelMMD().set_real(torch.ones(10, 2))


# ---------------------------------------------------------------------------------------------- images
def test_fid_infinity_does_not_drift_with_n_the_way_plain_fid_does():
    """Features of two fixed Gaussians (true FID 0.25) at N = 500 and 2,000 per side, 8 draws each: plain FID falls
    with N by its 1/N bias (by > 0.2); FID-infinity's mean moves by less than a third of that and sits within 0.08 of
    the truth at both N. KID (unbiased) does not drift either."""
    d = 16
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5 + torch.eye(d, dtype=torch.float64)
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = 0.5

    def sample(n: int, offset: Tensor) -> Tensor:
        return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + offset

    plain, extrapolated, kid = {}, {}, {}
    for n in (500, 2000):
        f, i, k = [], [], []
        for draw in range(8):
            real, fake = sample(n, torch.zeros(d, dtype=torch.float64)), sample(n, shift)
            f.append(float(frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))))
            i.append(fid_infinity(real, fake, seed=draw)[0])
            k.append(kernel_inception_distance(real.float(), fake.float(), subsets=1, subset_size=n)[0])
        plain[n], extrapolated[n], kid[n] = statistics.mean(f), statistics.mean(i), statistics.mean(k)
    drift = plain[500] - plain[2000]
    assert drift > 0.2 and plain[2000] > 0.25 + 0.05  # plain FID: biased up, by more at smaller N
    assert abs(extrapolated[500] - extrapolated[2000]) < drift / 3
    assert abs(extrapolated[500] - 0.25) < 0.08 and abs(extrapolated[2000] - 0.25) < 0.08
    assert abs(kid[500] - kid[2000]) < 0.3 * kid[2000]


def test_fid_infinity_rejects_bad_fractions():
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match="fractions"):
        fid_infinity(x, x, fractions=(1.0,))
    with pytest.raises(ValueError, match="fractions"):
        fid_infinity(x, x, fractions=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------- monitor, configs
def test_monitor_logs_mmd_with_its_g_step_on_the_ring_with_identity_features():
    """A short fit on the ring: val/mmd is on by default; it is published with val/mmd_g_step
    into callback_metrics next to val/fid, recorded in the history, the summary and the checkpoint state."""
    L.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    module = GANModule(TinyG(4, 2), TinyD(2), n_critic=1)
    data = GaussianMixtureDataModule(kind="ring", n_samples=512, n_reference=400, batch_size=64, seed=0)
    monitor = FIDMonitor(every_n_g_steps=3, num_samples=300, feature_extractor="identity", verbose=False,
                         cache_dir=None, dataset_key=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps_for(6, 1), callbacks=[monitor], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert MMD_KEY in metrics and FID_KEY in metrics
    assert float(metrics[f"{MMD_KEY}_g_step"]) == 6.0
    steps = [g for g, _ in monitor.signal_history["mmd"]]
    assert steps == [3, 6]
    assert float(metrics[MMD_KEY]) == pytest.approx(monitor.signal_history["mmd"][-1][1])
    assert monitor.summary_fields(trainer, module)["mmd_history"][-1][0] == 6
    restored = FIDMonitor(feature_extractor="identity")
    restored.load_state_dict(monitor.state_dict())
    assert restored.signal_history == monitor.signal_history


def test_monitor_mmd_switch():
    with pytest.raises(ValueError, match="mmd"):
        FIDMonitor(mmd="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scales"):
        FIDMonitor(mmd_scales=[])
    with pytest.raises(ValueError, match="mmd"):
        FIDMonitor(mmd=None)  # type: ignore[arg-type]
    assert FIDMonitor().mmd and not FIDMonitor(mmd=False).mmd


@pytest.mark.parametrize("overrides,expected", [
    (["data=gaussians"], "val/mmd"), (["data=gaussians_grid"], "val/mmd"), (["experiment=ring"], "val/mmd"),
    ([], "val/mmd"), (["data=mnist"], "val/mmd"), (["data=gaussians", "stop_metric=val/fid"], "val/fid"),
])
def test_configs_stop_on_mmd(overrides, expected):
    """Points and images decide on val/mmd (the signal study's winner); the monitor logs it in every config."""
    cfg = compose_config([*overrides, "output_dir=x"])
    assert cfg.stop_metric == expected
    assert cfg.callbacks.fid.mmd is True
    rules = instantiate(cfg.early_stopping).rules
    assert {r.monitor for r in rules.values() if r.cadence == "evaluation"} == {expected}
    assert instantiate(cfg.callbacks.best_generator).monitor == expected


def test_signal_study_quick(tmp_path):
    """The study harness end to end in seconds: digits and the ring, tiny budgets."""
    import json

    sys.path.insert(0, str(REPO / "studies"))
    import signal_study

    assert signal_study.main(["--quick", "--seeds", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "signal_study.json").read_text())
    kinds = {r["setup"]: r for r in report["runs"]}
    assert set(kinds) == {"digits", "ring"}
    digits = kinds["digits"]
    assert {"fid", "kid", "fid_inf", "mmd", "reference"} <= set(digits["snapshots"][0])
    assert "fid_inf~reference" in digits["analysis"]
    assert {"hq_fraction", "modes", "mmd_10k", "fid", "mmd"} <= set(kinds["ring"]["snapshots"][0])
    assert "Command:" in (tmp_path / "signal_study.md").read_text()
    assert signal_study.spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert signal_study.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)

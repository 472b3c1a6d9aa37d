"""Intra-class FID: the mean of per-class FIDs (lightning_regan.fid.intra), its cached per-class real statistics, the
FID monitor's ``val/intra_fid`` for class-conditional modules, and early termination driven by it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.callbacks import EarlyTermination, FIDMonitor
from lightning_regan.callbacks.fid_monitor import INTRA_FID_KEY
from lightning_regan.data import DigitsDataModule
from lightning_regan.fid import IntraClassFID, RealStatistics, compute_class_statistics, load_or_compute_class_statistics
from lightning_regan.fid.metric import frechet_distance
from lightning_regan.models import MLPDiscriminator
from lightning_regan.stopping import Plateau, StopReason

from helpers import LookupG, quiet_trainer


def _stats(x: Tensor) -> RealStatistics:
    x = x.double()
    return RealStatistics(x.sum(0), x.T @ x, x.shape[0])


def _fid(real: Tensor, fake: Tensor) -> float:
    real, fake = real.double(), fake.double()
    return float(frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T)))


@pytest.mark.parametrize("per_class", [3, 40])  # fewer samples than features (low-rank route) and more
def test_intra_fid_is_the_mean_of_the_per_class_frechet_distances(per_class):
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(50, 4, generator=g) * (c + 1) + c for c in range(3)]
    fake = torch.randn(3 * per_class, 4, generator=g) * 1.5
    labels = torch.arange(3).repeat_interleave(per_class)
    metric = IntraClassFID([_stats(r) for r in real])
    expected = [_fid(real[c], fake[labels == c]) for c in range(3)]
    per = metric.per_class(fake, labels)
    assert list(per) == [0, 1, 2]
    for c in range(3):
        assert per[c] == pytest.approx(expected[c], rel=1e-6, abs=1e-9)
    assert metric(fake, labels) == pytest.approx(sum(expected) / 3, rel=1e-6)
    # a class with fewer than 2 generated samples is left out of the mean; non-finite features give NaN
    only_two = labels.clone()
    only_two[labels == 2] = 0
    only_two[-1] = 2
    assert set(metric.per_class(fake, only_two)) == {0, 1}
    assert math.isnan(metric(torch.full_like(fake, float("nan")), labels))
    # matching classes give a small value, swapped classes a large one
    matched = torch.cat([r[:per_class] for r in real])
    assert metric(matched, labels) < metric(matched, labels.flip(0))


class CountingIdentity(nn.Module):
    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.seen += x.shape[0]
        return x.flatten(1)


def test_per_class_real_statistics_are_cached_and_checked(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, generator=g), torch.arange(60) % 3
    data = TensorDataset(x, y)
    extractor = CountingIdentity()
    stats = load_or_compute_class_statistics(data, extractor, 3, 30, dataset_key="toy", cache=tmp_path, batch_size=7)
    assert extractor.seen == 30 and [s.num_samples for s in stats] == [10, 10, 10]
    torch.testing.assert_close(stats[1].mean(), x[:30][y[:30] == 1].double().mean(0))
    again = load_or_compute_class_statistics(None, extractor, 3, 30, dataset_key="toy", cache=tmp_path)
    assert extractor.seen == 30 and all(s.source == "cache" for s in again)  # read from disk, nothing encoded
    torch.testing.assert_close(again[2].cov(), stats[2].cov())
    load_or_compute_class_statistics(data, extractor, 3, 45, dataset_key="toy", cache=tmp_path)
    assert extractor.seen == 75  # another num_real_samples is another cache entry
    with pytest.raises(ValueError, match="fewer than 2 real samples"):
        compute_class_statistics(data, extractor, 3, 4)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        compute_class_statistics(data, extractor, 2, 30)
    with pytest.raises(ValueError, match="labelled real data"):
        compute_class_statistics(TensorDataset(x), extractor, 3, 30)


def _fit(shift: int, g_steps: int, *callbacks) -> tuple[FIDMonitor, dict]:
    dm = DigitsDataModule(batch_size=32)
    images, labels = dm.train_dataset().tensors
    module = GANModule(LookupG(images, labels, shift), MLPDiscriminator((1, 8, 8), num_classes=10), num_classes=10)
    fid = FIDMonitor(every_n_g_steps=1, num_samples=500, num_real_samples=1000, feature_extractor="classifier",
                     intra_fid=True, verbose=False)
    trainer = quiet_trainer(max_steps=max_steps_for(g_steps), callbacks=[fid, *callbacks])
    trainer.fit(module, dm)
    return fid, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_fid_monitor_logs_intra_fid_that_sees_wrong_classes_the_fid_misses():
    _, right = _fit(0, 1)
    _, wrong = _fit(1, 1)
    assert right["val/intra_fid_g_step"] == 1.0
    assert right["val/fid"] == pytest.approx(wrong["val/fid"], rel=0.5)  # same digits overall
    assert wrong[INTRA_FID_KEY] > 5 * right[INTRA_FID_KEY]  # but class k's samples are not class k's digits


def test_early_termination_stops_on_intra_fid():
    """The FID stop rules take any lower-is-better metric: ``monitor`` = ``val/intra_fid``. The lookup generator never
    changes, so its intra-class FID is flat and the plateau rule stops the run."""
    rule = Plateau(patience=2, window=1, monitor=INTRA_FID_KEY)
    stop = EarlyTermination([rule], verbose=False)
    fid, metrics = _fit(1, 10, stop)
    assert stop.stop_reason == StopReason.PLATEAU and stop.stopped_g_step == 3
    assert len(fid.history) == 3 and stop.states["plateau"].best == pytest.approx(metrics[INTRA_FID_KEY])
    assert [row["intra_fid"] for row in fid.extra_history] == [pytest.approx(metrics[INTRA_FID_KEY])] * 3


def test_intra_fid_is_skipped_for_unconditional_modules():
    from helpers import TinyD

    class Flat(nn.Module):
        latent_dim = 4

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 64)

        def forward(self, z: Tensor) -> Tensor:
            return torch.tanh(self.net(z)).view(-1, 1, 8, 8)

    fid = FIDMonitor(every_n_g_steps=1, num_samples=50, feature_extractor="classifier", intra_fid=True, verbose=False)
    trainer = quiet_trainer(max_steps=max_steps_for(1), callbacks=[fid])
    trainer.fit(GANModule(Flat(), TinyD(64)), DigitsDataModule(batch_size=32))
    assert "val/fid" in trainer.callback_metrics and INTRA_FID_KEY not in trainer.callback_metrics

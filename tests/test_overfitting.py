"""OverfittingMonitor: D's mean logit on training vs held-out reals (the gap ADA's paper plots), and the held-out set."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_regan import GANModule, OverfittingMonitor
from lightning_regan.callbacks import RunSummary
from lightning_regan.callbacks.overfitting import (D_GAP_KEY, D_GENERATED_KEY, D_HELDOUT_KEY, D_RV_KEY, D_TRAIN_KEY,
                                                   mean_logit, overfitting_rv, take_samples)
from lightning_regan.data import DigitsDataModule, GaussianMixtureDataModule
from helpers import TinyCondD, TinyCondG, TinyD, TinyG, quiet_trainer


class MemorizingD(nn.Module):
    """A D that has memorized a set of points: logit +1 on them, -1 on anything else."""

    def __init__(self, memorized: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("memorized", memorized.flatten(1))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = (x.flatten(1)[:, None] == self.memorized[None]).all(-1).any(-1).float()
        return 2 * hit - 1 + 0 * self.w


def _points(dm: GaussianMixtureDataModule) -> torch.Tensor:
    train = dm.train_dataset()
    return torch.stack([train[i] if torch.is_tensor(train[i]) else train[i][0] for i in range(len(train))])


def test_limit_holds_out_the_rest_of_the_training_set():
    dm = DigitsDataModule(limit=300, batch_size=16)
    train, heldout = dm.train_dataset(), dm.heldout_dataset()
    assert len(train) == 300 and len(heldout) == 1797 - 300
    assert not set(train.indices) & set(heldout.indices)
    assert sorted(train.indices + heldout.indices) == list(range(1797))
    assert DigitsDataModule(batch_size=16).heldout_dataset() is None  # D trains on everything: nothing held out
    assert DigitsDataModule(limit=1797, batch_size=16).heldout_dataset() is None  # the whole set: nothing held out


def test_take_samples_is_seeded_and_keeps_labels():
    dm = DigitsDataModule(limit=300, batch_size=16)
    x1, y1 = take_samples(dm.train_dataset(), 50, seed=3)
    x2, y2 = take_samples(dm.train_dataset(), 50, seed=3)
    x3, _ = take_samples(dm.train_dataset(), 50, seed=4)
    assert x1.shape == (50, 1, 8, 8) and y1.shape == (50,) and y1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    x, y = take_samples(dm.train_dataset(), 10_000, seed=0)  # more than there are: all of them
    assert len(x) == 300
    unlabelled = TensorDataset(torch.randn(20, 2))  # items (x,): no label
    assert take_samples(unlabelled, 8, seed=0)[1] is None


def test_mean_logit_in_eval_mode_without_gradients_and_restores_the_mode():
    seen = []

    class ModeD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return torch.full((len(x), 1), 0.5)

    module = GANModule(TinyG(), ModeD())
    module.discriminator.train()
    assert mean_logit(module, torch.zeros(600, 2), batch_size=256) == pytest.approx(0.5)
    assert seen == [(False, False)] * 3 and module.discriminator.training


def test_mean_logit_passes_labels_to_a_conditional_d():
    module = GANModule(TinyCondG(num_classes=3), TinyCondD(num_classes=3), num_classes=3)
    x, y = torch.randn(20, 2), torch.tensor([0, 1, 2, 0] * 5)
    with torch.no_grad():
        expected = module.discriminator(x, y).double().mean().item()
    assert mean_logit(module, x, y) == pytest.approx(expected)


def test_the_gap_of_a_memorizing_d_and_of_one_that_generalizes():
    dm = GaussianMixtureDataModule(n_samples=256, batch_size=16, limit=128)
    module = GANModule(TinyG(), MemorizingD(_points(dm)))
    monitor = OverfittingMonitor(every_n_g_steps=1, num_samples=64)
    monitor.setup(SimpleNamespace(datamodule=dm), module, "fit")
    assert monitor.active
    # Gap 2: it knows its training set; held-out reals score like the generated samples, so r_v = 1.
    d_train, d_heldout, d_generated = monitor.evaluate(module)
    assert (d_train, d_heldout, d_generated) == (pytest.approx(1.0), pytest.approx(-1.0), pytest.approx(-1.0))
    assert overfitting_rv(d_train, d_heldout, d_generated) == pytest.approx(1.0)
    module_fair = GANModule(TinyG(), TinyD())
    d_train, d_heldout, _ = monitor.evaluate(module_fair)
    assert abs(d_train - d_heldout) < 0.2  # an untrained D scores both sets of the same mixture alike


def test_rv_is_the_gap_over_the_separation_from_fakes():
    assert overfitting_rv(3.0, 2.0, -1.0) == pytest.approx(0.25)
    assert overfitting_rv(30.0, 20.0, -10.0) == pytest.approx(0.25)  # scale-free: ten times the logits, same r_v
    assert overfitting_rv(2.0, 2.0, -1.0) == 0.0
    assert overfitting_rv(1.0, 0.5, 1.0) is None and overfitting_rv(1.0, 0.5, 2.0) is None  # D does not separate


def test_generated_samples_are_fixed_and_conditional_ones_get_labels():
    dm = GaussianMixtureDataModule(n_samples=256, batch_size=16, limit=128)
    seen = []

    class LabelD(TinyCondD):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(y.clone())
            return super().forward(x, y)

    k = dm.num_classes
    module = GANModule(TinyCondG(num_classes=k), LabelD(num_classes=k), num_classes=k)
    monitor = OverfittingMonitor(num_samples=300)  # more than one generation batch of 256
    monitor.setup(SimpleNamespace(datamodule=dm), module, "fit")
    first = monitor.evaluate(module)
    # Labels reach D for the 128 training reals (all there are), the 128 held-out ones and the 300 fakes (2 batches).
    assert [len(y) for y in seen] == [128, 128, 256, 44]
    assert monitor.evaluate(module) == first  # the same reals and the same noise every time
    state = torch.get_rng_state()
    monitor.evaluate(module)
    assert torch.equal(state, torch.get_rng_state())  # the global random stream is not touched


def test_monitor_is_off_without_held_out_reals(caplog):
    monitor = OverfittingMonitor()
    with caplog.at_level("INFO"):
        monitor.setup(SimpleNamespace(datamodule=GaussianMixtureDataModule(n_samples=64, batch_size=8)),
                      GANModule(TinyG(), TinyD()), "fit")
    assert not monitor.active and "no held-out reals" in caplog.text
    with pytest.raises(RuntimeError, match="no held-out reals"):
        monitor.evaluate(GANModule(TinyG(), TinyD()))


def test_monitor_needs_a_discriminator():
    class NoD(nn.Module):
        device = torch.device("cpu")

    with pytest.raises(ValueError, match="pl_module.discriminator"):
        OverfittingMonitor().setup(SimpleNamespace(datamodule=GaussianMixtureDataModule(n_samples=64, batch_size=8, limit=32)),
                                   NoD(), "fit")


@pytest.mark.parametrize("kwargs", [{"every_n_g_steps": -1}, {"num_samples": 0}, {"seed": 1.5}, {"every_n_g_steps": True}])
def test_monitor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="OverfittingMonitor"):
        OverfittingMonitor(**kwargs)


def test_monitor_logs_during_training_and_writes_the_summary(tmp_path):
    dm = GaussianMixtureDataModule(n_samples=512, batch_size=32, limit=256)
    module = GANModule(TinyG(), TinyD())
    monitor = OverfittingMonitor(every_n_g_steps=4, num_samples=64)
    trainer = quiet_trainer(max_steps=20, callbacks=[monitor, RunSummary(tmp_path, plots=False)])
    trainer.fit(module, datamodule=dm)
    assert [row[0] for row in monitor.history] == [4, 8, 10]  # every 4 G steps and the end
    m = trainer.callback_metrics
    d_train, d_heldout, d_generated = (float(m[k]) for k in (D_TRAIN_KEY, D_HELDOUT_KEY, D_GENERATED_KEY))
    assert float(m[D_GAP_KEY]) == pytest.approx(d_train - d_heldout, abs=1e-6)
    rv = overfitting_rv(d_train, d_heldout, d_generated)
    assert (D_RV_KEY in m) == (rv is not None)
    if rv is not None:
        assert float(m[D_RV_KEY]) == pytest.approx(rv, rel=1e-5, abs=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())["overfitting"]
    assert [row[0] for row in summary["history"]] == [4, 8, 10]
    g, a, b, f = monitor.history[-1]
    assert summary["history"][-1] == pytest.approx([g, a, b, a - b, f, overfitting_rv(a, b, f)])
    assert summary["final_gap"] == pytest.approx(a - b) and summary["final_rv"] == summary["history"][-1][5]

    restored = OverfittingMonitor()
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.history == monitor.history
    restored.load_state_dict({"history": [[4, 1.0, 0.5]]})  # a checkpoint from before d_generated was recorded
    assert restored.history == [(4, 1.0, 0.5, None)]
    assert restored.summary_fields(None, module)["overfitting"]["history"] == [[4, 1.0, 0.5, 0.5, None, None]]


def test_monitor_does_not_change_training(tmp_path):
    """The monitor only reads D (eval mode, no gradients, its own seeded sample choice): the run is unchanged."""

    def train(callbacks: list) -> dict:
        torch.manual_seed(0)
        dm = GaussianMixtureDataModule(n_samples=512, batch_size=32, limit=256)
        module = GANModule(TinyG(), TinyD())
        quiet_trainer(max_steps=12, callbacks=callbacks).fit(module, datamodule=dm)
        return module.state_dict()

    plain, monitored = train([]), train([OverfittingMonitor(every_n_g_steps=3, num_samples=64)])
    assert all(torch.equal(plain[k], monitored[k]) for k in plain)

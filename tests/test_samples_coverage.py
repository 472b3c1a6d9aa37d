"""SampleGrid and ModeCoverageMonitor: cadence in G steps, files, logged values, RNG hygiene, real GANModule run."""

from __future__ import annotations

import csv
import functools
from types import SimpleNamespace
from typing import Optional

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan.callbacks.mode_coverage import ModeCoverageMonitor
from lightning_regan.callbacks.samples import SampleGrid
from lightning_regan.inputs import seeded_noise
from lightning_regan.data import DigitsDataModule, GaussianMixtureDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*configure_optimizers.*returned `None`"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval"),
]


class ConstantImages(nn.Module):
    """Every sample is an image filled with ``value``."""

    def __init__(self, latent_dim: int, shape=(1, 8, 8), value: float = 1.0) -> None:
        super().__init__()
        self.latent_dim, self.shape, self.value = latent_dim, shape, value
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: Tensor) -> Tensor:
        return torch.full((z.shape[0], *self.shape), self.value, device=z.device) * self.scale


class ModePicker(nn.Module):
    """Maps each z to one of the first ``active`` centers, deterministically."""

    def __init__(self, latent_dim: int, centers: Tensor, active: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("centers", centers[:active].clone())

    def forward(self, z: Tensor) -> Tensor:
        idx = (z[:, 0].abs() * 1000).long() % len(self.centers)
        return self.centers[idx]


class StandIn(L.LightningModule):
    """The GANModule members the callbacks use; one G step every ``g_every`` batches (like n_critic)."""

    def __init__(self, generator: nn.Module, g_every: int = 1, num_fixed: int = 16) -> None:
        super().__init__()
        self.generator = generator
        self.latent_dim = generator.latent_dim
        self.g_every = g_every
        self.g_steps = 0
        self.generate_calls = 0
        self.automatic_optimization = False
        self.register_buffer("fixed_noise", torch.randn(num_fixed, self.latent_dim, generator=torch.Generator().manual_seed(0)))

    def sample_noise(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    @torch.no_grad()
    def generate(self, n: Optional[int] = None, z: Optional[Tensor] = None) -> Tensor:
        self.generate_calls += 1
        return self.generator(self.sample_noise(n) if z is None else z.to(self.device))

    def training_step(self, batch, batch_idx):
        self.g_step_taken = (batch_idx + 1) % self.g_every == 0
        if self.g_step_taken:
            self.g_steps += 1

    def configure_optimizers(self):
        return None


def _loader(n: int = 48, dim: int = 2) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(n, dim)), batch_size=1)


def _trainer(callbacks, batches: Optional[int], **kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=batches, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    opts.update(kw)
    return L.Trainer(**opts)


# ---------------------------------------------------------------- SampleGrid
def test_sample_grid_writes_on_g_steps_and_at_the_end(tmp_path):
    module = StandIn(ConstantImages(4, value=1.0), g_every=2)  # a G step every 2nd batch, as with n_critic=2
    cb = SampleGrid(tmp_path / "samples", every_n_g_steps=3, nrow=4)
    _trainer([cb], batches=16).fit(module, _loader())
    # 16 batches -> 8 G steps: grids at 3 and 6, and the final step 8 at train end.
    assert [g for g, _ in cb.written] == [3, 6, 8]
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["last.png", "step_3.png", "step_6.png", "step_8.png"]
    assert (tmp_path / "samples" / "last.png").read_bytes() == (tmp_path / "samples" / "step_8.png").read_bytes()
    grid = Image.open(tmp_path / "samples" / "step_3.png")
    # 16 images of 8x8 in rows of 4 with torchvision's 2-pixel padding: 4 * (8 + 2) + 2 pixels each way, enlarged
    # 7x (nearest neighbour: each pixel a 7x7 block) to at least 256 px
    assert grid.size == (7 * 42, 7 * 42)
    big = torch.tensor(list(grid.convert("L").getdata())).view(294, 294)
    assert torch.equal(big, big[::7, ::7].repeat_interleave(7, 0).repeat_interleave(7, 1))  # whole 7x7 blocks
    grid = grid.resize((42, 42), Image.NEAREST)
    pixels = torch.tensor(list(grid.convert("L").getdata())).view(42, 42)
    assert torch.all(pixels[2:10, 2:10] == 255)  # images of +1 are white


def test_sample_grid_does_not_repeat_the_resumed_step(tmp_path):
    module = StandIn(ConstantImages(4), g_every=2)
    module.g_steps = 6  # as restored from a checkpoint written right after the grid of step 6
    cb = SampleGrid(tmp_path, every_n_g_steps=3)
    _trainer([cb], batches=6).fit(module, _loader())
    assert module.g_steps == 9 and [g for g, _ in cb.written] == [9]


def test_sample_grid_maps_minus_one_to_black(tmp_path):
    module = StandIn(ConstantImages(4, value=-1.0), num_fixed=4)
    cb = SampleGrid(tmp_path, every_n_g_steps=0, nrow=2)
    _trainer([cb], batches=2).fit(module, _loader())
    assert [g for g, _ in cb.written] == [2]  # every_n_g_steps=0: only at the end
    img = Image.open(tmp_path / "step_2.png").convert("L")
    assert img.getpixel((5, 5)) == 0


def test_sample_grid_scatter_for_points(tmp_path):
    dm = GaussianMixtureDataModule(n_samples=64, n_reference=300, batch_size=8)
    module = StandIn(ModePicker(3, dm.centers, active=8))
    cb = SampleGrid(tmp_path, every_n_g_steps=4, num_points=200, num_real_points=100)
    _trainer([cb], batches=4).fit(module, datamodule=dm)
    assert [g for g, _ in cb.written] == [4]
    img = Image.open(tmp_path / "step_4.png")
    assert img.format == "PNG" and img.size == (400, 400)
    assert cb._real is not None and cb._real.shape == (100, 2)
    assert cb._point_inputs(module)[0].shape == (200, 3)  # drawn once, kept


def test_sample_grid_writes_on_rank_zero_only(tmp_path):
    module = StandIn(ConstantImages(4))
    cb = SampleGrid(tmp_path, every_n_g_steps=1)
    assert cb.write(SimpleNamespace(is_global_zero=False), module, 1) is None
    assert not any(tmp_path.iterdir()) and module.generate_calls == 0


@pytest.mark.parametrize("kwargs", [dict(every_n_g_steps=-1), dict(nrow=0), dict(num_points=0)])
def test_sample_grid_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SampleGrid(tmp_path, **kwargs)


# ---------------------------------------------------------------- ModeCoverageMonitor
class _Metrics(L.Callback):
    """Records what the monitor logged, right after it logged it."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        if "val/modes_covered" in m and (not self.seen or self.seen[-1][0] != pl_module.g_steps):
            if pl_module.g_steps % 5 == 0:
                self.seen.append((pl_module.g_steps, float(m["val/modes_covered"]), float(m["val/hq_fraction"])))


@pytest.mark.parametrize("active", [8, 3])
def test_mode_coverage_monitor_logs_covered_modes(active):
    dm = GaussianMixtureDataModule(n_samples=64, batch_size=4)
    module = StandIn(ModePicker(3, dm.centers, active=active))
    monitor, probe = ModeCoverageMonitor(every_n_g_steps=5, num_samples=800), _Metrics()
    _trainer([monitor, probe], batches=12).fit(module, datamodule=dm)
    assert [g for g, _ in monitor.history] == [5, 10, 12]  # 12 = final step, scored at train end
    assert all(r["modes_covered"] == active and r["num_modes"] == 8 and r["hq_fraction"] == 1.0 for _, r in monitor.history)
    assert probe.seen == [(5, float(active), 1.0), (10, float(active), 1.0)]


def test_mode_coverage_monitor_writes_every_evaluation_to_the_logger(tmp_path):
    dm = GaussianMixtureDataModule(n_samples=64, batch_size=4)
    module = StandIn(ModePicker(3, dm.centers, active=5))
    monitor = ModeCoverageMonitor(every_n_g_steps=2, num_samples=400)
    trainer = _trainer([monitor], batches=7, logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=50)
    trainer.fit(module, datamodule=dm)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    covered = [float(r["val/modes_covered"]) for r in rows if r.get("val/modes_covered")]
    assert covered == [5.0] * 4  # G steps 2, 4, 6 and the final 7
    assert [g for g, _ in monitor.history] == [2, 4, 6, 7]
    assert float(trainer.callback_metrics["val/modes_covered"]) == 5.0


def test_mode_coverage_monitor_uses_fixed_noise_and_leaves_global_rng_alone():
    dm = GaussianMixtureDataModule(n_samples=64, batch_size=4)
    module = StandIn(ModePicker(3, dm.centers, active=8))
    monitor = ModeCoverageMonitor(every_n_g_steps=1, num_samples=100, seed=7)
    monitor.setup(SimpleNamespace(datamodule=dm), module, "fit")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = monitor.evaluate(module)
    assert torch.equal(torch.rand(3), expected_next)
    assert monitor.evaluate(module) == first
    torch.manual_seed(0)
    assert torch.equal(seeded_noise(module, 5, seed=7), seeded_noise(module, 5, seed=7))
    assert not torch.equal(seeded_noise(module, 5, seed=7), seeded_noise(module, 5, seed=8))


def test_mode_coverage_monitor_needs_mixture_data():
    module = StandIn(ConstantImages(4))
    monitor = ModeCoverageMonitor()
    with pytest.raises(ValueError, match="GaussianMixtureDataModule"):
        monitor.setup(SimpleNamespace(datamodule=DigitsDataModule()), module, "fit")
    explicit = ModeCoverageMonitor(centers=torch.zeros(1, 2), std=0.1)
    explicit.setup(SimpleNamespace(datamodule=None), module, "fit")
    with pytest.raises(ValueError, match="2-D points"):
        explicit.evaluate(module)
    with pytest.raises(ValueError, match="num_samples"):
        ModeCoverageMonitor(num_samples=0)


# ---------------------------------------------------------------- with the real GANModule
def test_callbacks_with_gan_module_on_the_ring(tmp_path):
    from lightning_regan.models import MLPDiscriminator, MLPGenerator
    from lightning_regan.module import GANModule, max_steps_for

    L.seed_everything(0, verbose=False)
    dm = GaussianMixtureDataModule(n_samples=2048, batch_size=64)
    module = GANModule(
        MLPGenerator(8, dm.shape, hidden=[32, 32]), MLPDiscriminator(dm.shape, hidden=[32, 32]), n_critic=2,
        g_optimizer=functools.partial(torch.optim.Adam, lr=1e-3), d_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    grid = SampleGrid(tmp_path / "samples", every_n_g_steps=5, num_points=300, num_real_points=200)
    monitor = ModeCoverageMonitor(every_n_g_steps=5, num_samples=500)
    trainer = _trainer([grid, monitor], batches=None, max_steps=max_steps_for(10, 2), max_epochs=-1)
    trainer.fit(module, datamodule=dm)
    assert module.g_steps == 10
    assert [g for g, _ in grid.written] == [5, 10]
    assert (tmp_path / "samples" / "step_10.png").is_file() and (tmp_path / "samples" / "last.png").is_file()
    assert [g for g, _ in monitor.history] == [5, 10]
    assert 0 <= float(trainer.callback_metrics["val/modes_covered"]) <= 8
    result = monitor.last
    assert result["num_modes"] == 8 and 0.0 <= result["hq_fraction"] <= 1.0 and sum(result["counts"]) <= 500

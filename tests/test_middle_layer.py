"""The layer between the leaves and Lightning: one G-step event, callbacks that talk through logged metrics, public
Lightning API only, stock callbacks and loggers beside ours, one noise path, a drop-in fit with a plain Trainer."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.callbacks import (
    BestGenerator,
    EarlyTermination,
    FIDMonitor,
    GStepCallback,
    GStepProgressBar,
    ModeCoverageMonitor,
    RandomStreams,
    RunSummary,
    SampleGrid,
)
from lightning_regan.module import seeded_noise
from lightning_regan.stopping import Divergence, Plateau

from helpers import Identity2D

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "lightning_regan"


# ---------------------------------------------------------------------------------------------- written here
class UserGenerator(nn.Module):
    """A user's generator (not the package's models): z (N, 8) -> points (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class UserDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class UserPoints(L.LightningDataModule):
    """A user's DataModule: a shifted 2-D Gaussian, (x, label) batches."""

    def __init__(self, n: int = 192, batch_size: int = 32) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(1)
        self.points = torch.randn(self.n, 2, generator=g) * 0.3 + torch.tensor([1.0, -1.0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.points, torch.zeros(self.n, dtype=torch.long)),
                          batch_size=self.batch_size, shuffle=True, drop_last=True)


class CountGSteps(GStepCallback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_g_step(self, trainer, pl_module, g_step):
        self.seen.append(g_step)


def make_module(**kw) -> GANModule:
    return GANModule(UserGenerator(), UserDiscriminator(), latent_dim=8, **kw)


def plain_trainer(tmp_path: Path, g_steps: int, n_critic: int = 1, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=max_steps_for(g_steps, n_critic), max_epochs=-1,
                enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                logger=False, enable_checkpointing=False)
    opts.update(kw)
    return L.Trainer(**opts)


# ---------------------------------------------------------------------------------------------- public API only
PRIVATE_LIGHTNING = re.compile(
    r"\b(trainer|pl_module|module)\._[a-z]\w*"  # a private attribute of a Trainer or a LightningModule
    r"|\.(_logger_connector|_results|_active_loop|_batches_that_stepped|_should_update|fit_loop|epoch_loop"
    r"|batch_progress|_checkpoint_connector|_accelerator_connector|_trainer)\b"
    r"|\bself\._(trainer|fabric|jit_is_scripting|device|dtype|current_fx_name|metric_attributes)\b"
)


def test_the_package_uses_no_private_lightning_api():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_LIGHTNING.search(code):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{lineno}: {line.strip()}")
        for node in ast.walk(ast.parse(text)):  # imports from private Lightning modules
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("lightning") and any(part.startswith("_") for part in name.split(".")):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: import {name}")
    assert not offenders, "private Lightning API:\n" + "\n".join(offenders)


def test_the_scan_catches_what_it_should():
    for bad in ("trainer._logger_connector.log_metrics(x)", "trainer.fit_loop.epoch_loop.batch_progress",
                "self._should_update(n, t)", "if self._trainer is None:", "loop._batches_that_stepped"):
        assert PRIVATE_LIGHTNING.search(bad), bad
    assert not PRIVATE_LIGHTNING.search("self._pending.clear()")


def test_callbacks_do_not_import_each_other():
    """Each callback module imports only the G-step event (g_step.py) from its siblings."""
    for path in sorted((PACKAGE / "callbacks").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_regan.callbacks"):
                assert node.module == "lightning_regan.callbacks.g_step", f"{path.name} imports {node.module}"


def test_gan_module_has_no_hook_a_subclass_must_super():
    """The training hooks that users override stay Lightning's no-ops: our plumbing lives in callbacks."""
    for hook in ("on_fit_start", "on_train_start", "on_train_batch_start", "on_train_batch_end"):
        assert getattr(GANModule, hook) is getattr(L.LightningModule, hook), hook


# ---------------------------------------------------------------------------------------------- one G-step event
@pytest.mark.parametrize("n_critic", [1, 3])
def test_one_g_step_event_per_generator_update(tmp_path, n_critic):
    counter = CountGSteps()
    module = make_module(n_critic=n_critic)
    plain_trainer(tmp_path, 7, n_critic, callbacks=[counter]).fit(module, datamodule=UserPoints())
    assert module.g_steps == 7 and module.d_steps == 7 * n_critic
    assert counter.seen == list(range(1, 8))  # once per G step, never for the D-only batches


def test_every_g_step_cadence_hangs_off_the_event():
    for cls in (FIDMonitor, EarlyTermination, BestGenerator, RunSummary, SampleGrid, ModeCoverageMonitor,
                GStepProgressBar):
        assert issubclass(cls, GStepCallback), cls.__name__
        assert "on_train_batch_end" not in vars(cls) or cls is EarlyTermination, cls.__name__


# ---------------------------------------------------------------------------------------------- drop-in
def test_drop_in_with_a_plain_trainer_user_networks_and_datamodule(tmp_path):
    """GANModule and our callbacks in a plain L.Trainer, with networks and a DataModule written here."""
    L.seed_everything(0, verbose=False)
    module = make_module(regularizers=None, n_critic=2)
    fid = FIDMonitor(every_n_g_steps=5, num_samples=128, feature_extractor=Identity2D(), real_data=torch.randn(256, 2),
                     verbose=False)
    early = EarlyTermination([Plateau(patience=50), Divergence()], verbose=False)
    summary = RunSummary(tmp_path, plots=False)
    trainer = plain_trainer(tmp_path, 20, 2, callbacks=[fid, early, summary])
    trainer.fit(module, datamodule=UserPoints())
    assert module.g_steps == 20 and module.d_steps == 40 and trainer.global_step == 60
    assert any(isinstance(cb, RandomStreams) for cb in trainer.callbacks)  # added by GANModule.configure_callbacks
    assert float(trainer.callback_metrics["val/fid_g_step"]) == 20.0
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "val/fid"} <= set(trainer.callback_metrics)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "completed" and s["g_steps"] == 20 and s["d_steps"] == 40
    assert [g for g, _ in s["fid_history"]] == [5, 10, 15, 20] and s["best_fid"] == min(f for _, f in s["fid_history"])
    assert s["early_termination"]["status"] == "completed"


# ---------------------------------------------------------------------------------------------- stock Lightning pieces
def test_stock_model_checkpoint_keeps_the_best_fid(tmp_path):
    L.seed_everything(0, verbose=False)
    module = make_module()
    fid = FIDMonitor(every_n_g_steps=3, num_samples=128, feature_extractor=Identity2D(), real_data=torch.randn(256, 2),
                     verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/fid", mode="min", filename="best", save_top_k=1,
                           every_n_train_steps=6)  # 6 global steps = 3 G steps (one D and one G update each)
    plain_trainer(tmp_path, 18, callbacks=[fid, ckpt], enable_checkpointing=True).fit(module, datamodule=UserPoints())
    best_fid, best_step = min((f, g) for g, f in fid.history)
    assert [g for g, _ in fid.history] == [3, 6, 9, 12, 15, 18]
    assert float(ckpt.best_model_score) == pytest.approx(best_fid)
    saved = torch.load(ckpt.best_model_path, weights_only=True)
    assert saved["regan"]["g_steps"] == best_step  # the generator of the best FID
    assert not any("best_generator" in str(k) for k in json.dumps(str(saved.get("callbacks", {}).keys())))


def test_stock_early_stopping_on_val_fid_stops_and_the_summary_says_so(tmp_path):
    L.seed_everything(0, verbose=False)
    module = make_module()
    fid = FIDMonitor(every_n_g_steps=1, num_samples=64, feature_extractor=Identity2D(), real_data=torch.randn(128, 2),
                     verbose=False)
    # min_delta far above any change: no evaluation counts as an improvement, so it stops after `patience` epochs.
    stop = EarlyStopping(monitor="val/fid", mode="min", patience=2, min_delta=1e9, check_on_train_epoch_end=True)
    trainer = plain_trainer(tmp_path, 100, callbacks=[fid, stop, RunSummary(tmp_path, plots=False)])
    trainer.fit(module, datamodule=UserPoints())  # 6 batches per epoch
    assert stop.stopped_epoch == 2 and module.g_steps == 18 < 100
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["status"], s["stop_reason"], s["g_steps"]) == ("stopped_early", "trainer_should_stop", 18)


def test_learning_rate_monitor_and_several_loggers_at_once(tmp_path):
    L.seed_everything(0, verbose=False)
    module = make_module()
    fid = FIDMonitor(every_n_g_steps=4, num_samples=64, feature_extractor=Identity2D(), real_data=torch.randn(128, 2),
                     verbose=False)
    loggers = [CSVLogger(tmp_path, name="csv", version=""), TensorBoardLogger(tmp_path, name="tb", version="")]
    trainer = plain_trainer(tmp_path, 12, callbacks=[fid, LearningRateMonitor(logging_interval="step")],
                            logger=loggers, log_every_n_steps=4)
    trainer.fit(module, datamodule=UserPoints())
    for logger in loggers:
        logger.save()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    assert {"train/d_loss", "train/g_loss", "val/fid", "val/fid_g_step", "epoch", "step"} <= columns
    assert any(c.startswith("lr-Adam") for c in columns)
    fids = [(int(float(r["val/fid_g_step"])), int(r["step"])) for r in rows if r["val/fid"]]
    assert fids == [(4, 3), (8, 7), (12, 11)]  # each evaluation once, at Lightning's step of its batch
    losses = [int(r["step"]) for r in rows if r["train/d_loss"]]
    assert losses == [3, 7, 11]  # every log_every_n_steps batches
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------------------------- one noise path
class SignPrior(GANModule):
    """A non-Gaussian prior: every latent coordinate is -1 or +1."""

    def sample_noise(self, n: int) -> torch.Tensor:
        return torch.randint(0, 2, (n, self.latent_dim), device=self.device).float() * 2 - 1


class RecordingGenerator(UserGenerator):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.detach().clone())
        return super().forward(z)


def test_every_consumer_of_noise_uses_the_modules_prior(tmp_path):
    from lightning_regan.cli.evaluate import checkpoint_batches

    L.seed_everything(0, verbose=False)
    generator = RecordingGenerator()
    module = SignPrior(generator, UserDiscriminator(), latent_dim=8)
    fid = FIDMonitor(every_n_g_steps=2, num_samples=64, feature_extractor=Identity2D(), real_data=torch.randn(128, 2),
                     verbose=False)
    grid = SampleGrid(tmp_path / "samples", every_n_g_steps=2, num_points=32, num_real_points=0)
    trainer = plain_trainer(tmp_path, 2, callbacks=[fid, grid])
    trainer.fit(module, datamodule=UserPoints())
    assert generator.inputs and all(set(z.unique().tolist()) <= {-1.0, 1.0} for z in generator.inputs)
    assert len(fid.history) == 1 and (tmp_path / "samples" / "step_2.png").is_file()
    generator.inputs.clear()
    list(checkpoint_batches(module, 20, seed=3, batch_size=8))  # regan-eval's (and regan-sample's) path
    assert len(generator.inputs) == 3 and all(set(z.unique().tolist()) <= {-1.0, 1.0} for z in generator.inputs)
    assert torch.equal(seeded_noise(module, 5, 7), seeded_noise(module, 5, 7))


# ---------------------------------------------------------------------------------------------- clean console
def test_default_regan_train_prints_no_warning(tmp_path):
    exe = shutil.which("regan-train")
    assert exe, "regan-train is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    run = tmp_path / "run"
    proc = subprocess.run(  # the default config, shortened
        [exe, f"hydra.run.dir={run}", "max_g_steps=20", "callbacks.fid.every_n_g_steps=10",
         "callbacks.fid.num_samples=100"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines()
             if re.search(r"warn|deprecat|\.py:\d+:|Tip:", line, re.IGNORECASE)]
    assert not noise, "\n".join(noise)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"

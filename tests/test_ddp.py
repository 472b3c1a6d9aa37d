"""DDP correctness of the GAN step, proven on CPU with gloo and 2 processes (plain ``strategy="ddp"``).

The DDP scenarios run in 2 fresh interpreters started side by side (``python tests/test_ddp.py <scenarios> <out>``
with ``LOCAL_RANK``/``WORLD_SIZE`` set, as torchrun would), so pytest itself is never re-run; one launch runs every
scenario because the imports dominate the cost. Every rank saves what it ended with, and the tests compare the
ranks with each other and with a single-process run on the concatenated global batch. A last test runs
``regan-train trainer=ddp_cpu`` end to end, through Lightning's own launcher under Hydra.

For the single-process comparison, randomness is made rank-independent so that the maths says the runs must
agree: rank ``r`` of ``W`` draws the ``r``-th slice of a global noise batch seeded by a call counter
(``sample_noise`` and WGAN-GP's interpolation coefficients), and its data batch is the ``r``-th slice of the global
batch. D has no BatchNorm (per-rank batch statistics would make the runs differ by design).

GANModule keeps DDP's reducer idle and all-reduces the stepping network's flattened gradients once per optimizer
step (``lightning_regan/distributed.py``); the byte count per G step is measured here from outside: every
``torch.distributed.all_reduce`` issued inside a training step, plus a DDP communication hook for the reducer.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional
from unittest import mock

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script by the DDP launcher
    sys.path.insert(0, str(REPO_ROOT))

from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.regularizers import R1, WGANGP, LeCam, Regularizer, WeightL2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyCondD, TinyCondG, TinyD, TinyG, labelled_points  # noqa: E402

WORLD = 2
GLOBAL_BATCH = 16
N_CRITIC = 2
G_STEPS = 4
DATA_SEED = 123
NOISE_SEED = 1000
EPS_SEED = 5000
# Regularizer configurations under test; R1 is lazy so that some D steps have no penalty (the set of
# used parameters changes between iterations, which static-graph DDP could not handle).
REGULARIZERS = ("l2", "r1", "wgan_gp", "lecam")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_slice(seed: int, n_local: int, shape: tuple[int, ...], uniform: bool = False) -> Tensor:
    """Rank ``r``'s slice ``[r * n_local, (r + 1) * n_local)`` of a global draw of ``W * n_local`` samples."""
    rank, world = _rank_world()
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand if uniform else torch.randn
    full = draw((world * n_local,) + shape, generator=gen)
    return full[rank * n_local : (rank + 1) * n_local]


class SlicedNoiseGAN(GANModule):
    """GANModule whose noise is the rank's slice of a global batch seeded by the call count."""

    noise_calls = 0

    def sample_noise(self, n: int) -> Tensor:
        self.noise_calls += 1
        return global_slice(NOISE_SEED + self.noise_calls, n, (self.latent_dim,)).to(self.device)


class SlicedWGANGP(WGANGP):
    """WGAN-GP whose interpolation coefficients are the rank's slice of a global draw."""

    calls = 0

    def interpolation_weights(self, real: Tensor) -> Tensor:
        self.calls += 1
        eps = global_slice(EPS_SEED + self.calls, real.shape[0], (1,) * (real.dim() - 1), uniform=True)
        return eps.to(device=real.device, dtype=real.dtype)


class ShardedPoints(L.LightningDataModule):
    """Fixed global batches of 2-D points; each rank reads its contiguous slice of every batch."""

    def __init__(self, shards: int, steps: int = N_CRITIC * G_STEPS) -> None:
        super().__init__()
        self.shards = shards
        gen = torch.Generator().manual_seed(DATA_SEED)
        self.batches = torch.randn(steps, GLOBAL_BATCH, 2, generator=gen) * 0.5 + 1.0

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.shards > 1 else 0
        n = GLOBAL_BATCH // self.shards
        return DataLoader([b[rank * n : (rank + 1) * n] for b in self.batches], batch_size=None)


def make_regularizer(name: str) -> dict[str, Any]:
    return {
        "l2": {"l2": WeightL2(weight=0.05)},
        "r1": {"r1": R1(weight=2.0, every=2)},
        "wgan_gp": {"wgan_gp": SlicedWGANGP(weight=5.0)},
        "lecam": {"lecam": LeCam(weight=0.5, decay=0.5)},
    }[name]


def run_gan(reg_name: str, strategy: Any, devices: int) -> GANModule:
    """Train the tiny GAN for ``G_STEPS`` G steps with one regularizer; returns the module."""
    L.seed_everything(0, verbose=False)
    module = SlicedNoiseGAN(
        TinyG(), TinyD(), regularizers=make_regularizer(reg_name), n_critic=N_CRITIC, ema_decay=0.8, loss="non_saturating"
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=max_steps_for(G_STEPS, N_CRITIC),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=ShardedPoints(shards=devices))
    return module


def save_rank_result(folder: Path, result: Any) -> None:
    rank, _ = _rank_world()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(result, folder / f"rank{rank}.pt")


def final_state(module: GANModule) -> dict[str, Any]:
    """Everything a replica must agree on: G, D, EMA of G, regularizer buffers, step counters."""
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "g_steps": module.g_steps,
        "d_steps": module.d_steps,
    }


# ---------------------------------------------------------------- scenarios run under DDP (as a script)
def ddp_cpu_strategy(**kwargs: Any) -> Any:
    """The strategy of conf/trainer/ddp_cpu.yaml (checked by test_trainer_configs_use_the_proven_strategy): plain DDP
    on gloo, no ``find_unused_parameters``."""
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend="gloo", **kwargs)


def scenario_equivalence(out: Path) -> None:
    results = {name: final_state(run_gan(name, ddp_cpu_strategy(), WORLD)) for name in REGULARIZERS}
    save_rank_result(out / "equivalence", results)


class NoiseRecorder(GANModule):
    """Default noise (global stream); remembers the first batch it drew."""

    first_noise: Optional[Tensor] = None

    def sample_noise(self, n: int) -> Tensor:
        z = super().sample_noise(n)
        if self.first_noise is None:
            self.first_noise = z.detach().clone()
        return z


def _streams_fit(out: Path, g_steps: int, ckpt_path: Optional[str] = None) -> NoiseRecorder:
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    module = NoiseRecorder(TinyG(), TinyD(), regularizers={"wgan_gp": WGANGP(1.0)}, ema_decay=0.9)
    gen = torch.Generator().manual_seed(DATA_SEED)
    points = torch.randn(WORLD * 4 * 8, 2, generator=gen) * 0.5 + 1.0  # 4 batches of 8 per rank and epoch
    loader = DataLoader(points, batch_size=8, shuffle=True, drop_last=True)
    # A checkpoint at every epoch end (4 batches = 8 optimizer steps).
    ckpt = ModelCheckpoint(dirpath=out / "streams" / "ckpt", every_n_train_steps=8, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=ddp_cpu_strategy(), max_steps=max_steps_for(g_steps, 1),
        logger=False, callbacks=[ckpt], enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module


def scenario_streams(out: Path) -> None:
    """Default noise differs between ranks; a DDP run resumed from an epoch-end checkpoint continues bit for bit."""
    full = _streams_fit(out, 12)
    resumed = _streams_fit(out, 12, ckpt_path=str(out / "streams" / "ckpt" / "step=8.ckpt"))
    save_rank_result(out / "streams", {"first_noise": full.first_noise, "full": final_state(full),
                                       "resumed": final_state(resumed)})


def _mid_epoch_fit(out: Path, g_steps: int, ckpt_path: Optional[str] = None) -> GANModule:
    """The product's data pipeline (GaussianMixtureDataModule: a StatefulDataLoader, Lightning's distributed
    sampler): 5 batches per rank and epoch, a checkpoint every G step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_regan.data import GaussianMixtureDataModule

    L.seed_everything(0, verbose=False)
    module = GANModule(TinyG(), TinyD(), regularizers={"wgan_gp": WGANGP(1.0)}, ema_decay=0.9)
    ckpt = ModelCheckpoint(dirpath=out / "mid_epoch" / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=ddp_cpu_strategy(), max_steps=max_steps_for(g_steps, 1),
        logger=False, callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
    )
    datamodule = GaussianMixtureDataModule(n_samples=WORLD * 5 * 8, n_reference=16, batch_size=8)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module


MID_EPOCH_CKPT = "step=14.ckpt"  # G step 7: batch 2 of the second epoch


def scenario_mid_epoch(out: Path) -> None:
    """A DDP run killed mid-epoch and resumed continues bit for bit (data order, noise, weights)."""
    full = _mid_epoch_fit(out, 10)
    resumed = _mid_epoch_fit(out, 10, ckpt_path=str(out / "mid_epoch" / "ckpt" / MID_EPOCH_CKPT))
    save_rank_result(out / "mid_epoch", {"full": final_state(full), "resumed": final_state(resumed)})


NAN_RANK, NAN_D_STEP = 1, 3


class NaNOnOneRank(GANModule):
    """Reports a NaN D loss on rank ``NAN_RANK`` only, at D step ``NAN_D_STEP`` (the weights stay finite)."""

    def discriminator_step(self, real: Tensor, d_opt: Any) -> dict[str, Tensor]:
        out = super().discriminator_step(real, d_opt)
        if self.global_rank == NAN_RANK and self.d_steps == NAN_D_STEP:
            out["d_loss"] = torch.tensor(float("nan"))
        return out


def _plain_trainer(callbacks: list, g_steps: int, n_critic: int = 1, strategy: Any = None, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=strategy or ddp_cpu_strategy(),
        max_steps=max_steps_for(g_steps, n_critic), logger=False, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )


class Points(L.LightningDataModule):
    """Shuffled 2-D points; ``shape`` tells FIDMonitor's identity extractor the sample shape."""

    shape = (2,)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(DATA_SEED)
        points = torch.randn(WORLD * 40 * 8, 2, generator=gen) * 0.5 + 1.0
        return DataLoader(points, batch_size=8, shuffle=True, drop_last=True)


def scenario_divergence(out: Path) -> None:
    """Only one rank sees a non-finite loss: both must stop at the same step, as diverged, without hanging."""
    from lightning_regan.callbacks.early_termination import EarlyTermination
    from lightning_regan.stopping import Divergence

    L.seed_everything(0, verbose=False)
    early = EarlyTermination([Divergence(check_finite=True)], verbose=False)
    module = NaNOnOneRank(TinyG(), TinyD())
    trainer = _plain_trainer([early], g_steps=30)
    trainer.fit(module, datamodule=Points())
    save_rank_result(out / "divergence", {
        "g_steps": module.g_steps, "global_step": trainer.global_step, "status": early.status,
        "stop_reason": None if early.stop_reason is None else early.stop_reason.value,
        "stopped_g_step": early.stopped_g_step, "should_stop": trainer.should_stop,
    })


def scenario_fid(out: Path) -> None:
    """FIDMonitor under DDP: every rank logs the same value (samples split over ranks, statistics synced)."""
    from lightning_regan.callbacks.fid_monitor import FIDMonitor

    L.seed_everything(0, verbose=False)
    real = torch.randn(256, 2, generator=torch.Generator().manual_seed(9)) * 0.5 + 1.0
    fid = FIDMonitor(every_n_g_steps=4, num_samples=128, batch_size=32, feature_extractor="identity", real_data=real,
                     verbose=False)
    module = GANModule(TinyG(), TinyD(), ema_decay=0.9)
    trainer = _plain_trainer([fid], g_steps=12)
    trainer.fit(module, datamodule=Points())
    save_rank_result(out / "fid", {"history": [[g, f] for g, f in fid.history],
                                   "logged": float(trainer.callback_metrics["val/fid"])})


# ---------------------------------------------------------------- replicas, bytes, drop-in
class OverflowOnOneRank(Regularizer):
    """A zero term, except at one D step on rank 1, where it is huge: under fp16 loss scaling, D's gradients
    overflow on that rank only."""

    def __init__(self) -> None:
        super().__init__(weight=1.0)
        self.calls = 0

    def forward(self, batch: Any) -> Tensor:
        self.calls += 1
        spike = _rank_world()[0] == 1 and self.calls == 3
        return batch.d_real.mean() * (1e30 if spike else 0.0)


REPLICA_G_STEPS, REPLICA_N_CRITIC = 50, 5
#: name -> (regularizers, loss, fp16 autocast with a GradScaler)
REPLICA_CONFIGS: dict[str, tuple[Any, str, bool]] = {
    "r1": (lambda: {"r1": R1(weight=1.0)}, "non_saturating", False),
    "wgan_gp": (lambda: {"wgan_gp": WGANGP(weight=10.0)}, "wasserstein", False),
    "r1_lazy": (lambda: {"r1": R1(weight=1.0, every=4)}, "non_saturating", False),
    "r1_fp16_scaler": (lambda: {"r1": R1(weight=1.0)}, "non_saturating", True),
    "fp16_overflow_on_one_rank": (lambda: {"r1": R1(weight=1.0), "spike": OverflowOnOneRank()}, "non_saturating", True),
}
#: GradScaler's scale at the end (it starts at 2**16 and halves at every skipped step; 50 G steps never grow it).
EXPECTED_SCALE = {"r1_fp16_scaler": 2.0**16, "fp16_overflow_on_one_rank": 2.0**15}


def scenario_replicas(out: Path) -> None:
    """50 G steps with n_critic=5 per regularizer, default (per-rank) noise: the replicas must stay bit-identical."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    results = {}
    for name, (make_regs, loss, fp16) in REPLICA_CONFIGS.items():
        L.seed_everything(0, verbose=False)
        module = GANModule(TinyG(), TinyD(), regularizers=make_regs(), loss=loss, n_critic=REPLICA_N_CRITIC,
                           ema_decay=0.9)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))] if fp16 else None
        trainer = _plain_trainer([], REPLICA_G_STEPS, REPLICA_N_CRITIC, plugins=plugins)
        trainer.fit(module, datamodule=Points())
        results[name] = final_state(module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        results[name]["scale"] = None if scaler is None else float(scaler.get_scale())
    save_rank_result(out / "replicas", results)


BYTES_G_STEPS, BYTES_N_CRITIC = 6, 3


class AllReduceCounter(GANModule):
    """GANModule counting the bytes of every ``torch.distributed.all_reduce`` issued inside its training steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.all_reduced = {"bytes": 0, "calls": 0}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        original = dist.all_reduce

        def counting(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
            self.all_reduced["bytes"] += tensor.numel() * tensor.element_size()
            self.all_reduced["calls"] += 1
            return original(tensor, *args, **kwargs)

        dist.all_reduce = counting
        try:
            return super().training_step(batch, batch_idx)
        finally:
            dist.all_reduce = original


class ReducerCounter(L.Callback):
    """Registers a DDP communication hook that counts what DDP's reducer all-reduces (then does DDP's default
    all-reduce). Lightning registers ``DDPStrategy(ddp_comm_hook=...)`` on CUDA only, hence a callback."""

    def __init__(self) -> None:
        self.counts = {"bytes": 0, "calls": 0}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def hook(state, bucket):  # no annotations: DDP checks them, and they are strings under __future__
            state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
            state["calls"] += 1
            return default_hooks.allreduce_hook(None, bucket)

        trainer.strategy.model.register_comm_hook(self.counts, hook)


def scenario_bytes(out: Path) -> None:
    """Bytes all-reduced per G step, now (plain DDP) and the way before (find_unused_parameters=True)."""
    results = {}
    for name, before in (("now", False), ("before", True)):
        L.seed_everything(0, verbose=False)
        module = AllReduceCounter(TinyG(), TinyD(), regularizers={"r1": R1(1.0, every=2)}, n_critic=BYTES_N_CRITIC)
        reducer = ReducerCounter()
        strategy = ddp_cpu_strategy(**({"find_unused_parameters": True} if before else {}))
        # The way before: GANModule's own reduction off (it finds no DDP wrapper), DDP's reducer does it.
        with mock.patch("lightning_regan.module.ddp_model", return_value=None) if before else nullcontext():
            _plain_trainer([reducer], BYTES_G_STEPS, BYTES_N_CRITIC, strategy=strategy).fit(module, datamodule=Points())
        results[name] = {
            "all_reduce": dict(module.all_reduced), "reducer": reducer.counts, "g_steps": module.g_steps,
            "g_params": sum(p.numel() for p in module.generator.parameters()),
            "d_params": sum(p.numel() for p in module.discriminator.parameters()),
        }
    save_rank_result(out / "bytes", results)


class TutorialGenerator(nn.Module):
    """The generator of Lightning's basic GAN tutorial (MLP blocks, BatchNorm, LeakyReLU, Tanh), for 8x8 images."""

    def __init__(self, latent_dim: int = 16, img_shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.img_shape = img_shape

        def block(in_feat: int, out_feat: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(latent_dim, 32, normalize=False), *block(32, 64), *block(64, 128),
            nn.Linear(128, math.prod(img_shape)), nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z).view(z.size(0), *self.img_shape)


class TutorialDiscriminator(nn.Module):
    """The tutorial's discriminator, returning logits (its final Sigmoid is what a logit loss replaces)."""

    def __init__(self, img_shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(math.prod(img_shape), 64), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(64, 32), nn.LeakyReLU(0.2, inplace=True), nn.Linear(32, 1),
        )

    def forward(self, img: Tensor) -> Tensor:
        return self.model(img.flatten(1))


class UserDigits(L.LightningDataModule):
    """A user's DataModule: scikit-learn's 8x8 digits as ``(image in [-1, 1], label)`` batches."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
        self.train_set = TensorDataset(images, torch.tensor(digits.target))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)


DROPIN_G_STEPS = 20


def scenario_dropin(out: Path) -> None:
    """A new user's script: tutorial networks, their own DataModule, a plain ``L.Trainer(strategy="ddp")``."""
    L.seed_everything(0, verbose=False)
    generator, discriminator = TutorialGenerator(), TutorialDiscriminator()
    initial = {k: v.detach().clone() for k, v in [*generator.named_parameters(), *discriminator.named_parameters()]}
    # G runs twice per step (the D step's fakes, then the G step); record G's first BatchNorm statistics each time.
    bn_seen: list[Tensor] = []
    generator.model[3].register_forward_pre_hook(lambda mod, args: bn_seen.append(mod.running_mean.clone()))
    module = GANModule(generator, discriminator, latent_dim=16, regularizers=[R1(1.0)])
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps_for(DROPIN_G_STEPS),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=UserDigits())
    params = {k: v.detach().clone() for k, v in [*generator.named_parameters(), *discriminator.named_parameters()]}
    save_rank_result(out / "dropin", {
        "initial": initial, "params": params, "g_steps": module.g_steps, "world_size": trainer.world_size,
        "bn_at_step_start": torch.stack(bn_seen[0::2]), "bn_mid_step": torch.stack(bn_seen[1::2]),
        "strategy": type(trainer.strategy).__name__, "g_loss": float(trainer.callback_metrics["train/g_loss"]),
    })


def scenario_reduction(out: Path) -> None:
    """all_reduce_gradients on hand-made gradients: mean per dtype, missing gradients, ranks that disagree."""
    from lightning_regan.distributed import all_reduce_gradients

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, _ = _rank_world()
    a, c = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(1))  # c: no gradient on any rank
    b = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    frozen = nn.Parameter(torch.zeros(4), requires_grad=False)
    a.grad = torch.full((3,), float(rank + 1))
    b.grad = torch.full((2,), 10.0 * (rank + 1), dtype=torch.float64)
    sent = all_reduce_gradients([a, b, c, frozen])
    result: dict[str, Any] = {"a": a.grad, "b": b.grad, "c_grad_is_none": c.grad is None, "sent": sent}
    d = nn.Parameter(torch.zeros(2))
    if rank == 0:  # rank 1 has no gradient where rank 0 has one
        d.grad = torch.ones(2)
    try:
        all_reduce_gradients([d])
        result["error"] = None
    except RuntimeError as err:
        result["error"] = str(err)
    save_rank_result(out / "reduction", result)


COND_G_STEPS, COND_N_CRITIC, COND_CLASSES = 20, 3, 3


class LabelledPoints(L.LightningDataModule):
    """Shuffled labelled 2-D points (one centre per class)."""

    def train_dataloader(self) -> DataLoader:
        x, y = labelled_points(WORLD * 40 * 8, COND_CLASSES, DATA_SEED)
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True)


def scenario_conditional(out: Path) -> None:
    """A class-conditional GAN (the user's own G(z, y), D(x, y)) with n_critic=3, lazy R1, WGAN-GP and LeCam:
    the replicas must stay bit-identical."""
    L.seed_everything(0, verbose=False)
    regs = {"r1": R1(weight=1.0, every=2), "wgan_gp": WGANGP(weight=1.0), "lecam": LeCam(weight=0.3)}
    module = GANModule(TinyCondG(num_classes=COND_CLASSES), TinyCondD(num_classes=COND_CLASSES), regularizers=regs,
                       n_critic=COND_N_CRITIC, ema_decay=0.9, num_classes=COND_CLASSES)
    trainer = _plain_trainer([], COND_G_STEPS, COND_N_CRITIC)
    trainer.fit(module, datamodule=LabelledPoints())
    save_rank_result(out / "conditional", final_state(module))


SCENARIOS = {
    "conditional": scenario_conditional,
    "replicas": scenario_replicas,
    "bytes": scenario_bytes,
    "dropin": scenario_dropin,
    "equivalence": scenario_equivalence,
    "streams": scenario_streams,
    "mid_epoch": scenario_mid_epoch,
    "fid": scenario_fid,
    "divergence": scenario_divergence,
    "reduction": scenario_reduction,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(scenarios: list[str], out: Path, timeout: float = 300) -> None:
    """Run ``scenarios`` (in one process group) on ``WORLD`` CPU processes started side by side, torchrun-style.

    Lightning's ``LightningEnvironment`` sees ``LOCAL_RANK`` and joins the group instead of spawning; starting the
    ranks together halves the wall time of the imports on a 2-core machine. Output goes to ``out/rank<r>.log``.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD), NODE_RANK="0")
    env.pop("PL_GLOBAL_SEED", None)
    procs, logs = [], []
    for rank in range(WORLD):
        log = open(out / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), ",".join(scenarios), str(out)],
            env=dict(env, LOCAL_RANK=str(rank)), stdout=log, stderr=subprocess.STDOUT,
        ))
    try:
        codes = [proc.wait(timeout=timeout) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    if codes is None or any(codes):
        tails = "\n".join(f"--- rank {r}:\n" + (out / f"rank{r}.log").read_text()[-4000:] for r in range(WORLD))
        what = f"hung (> {timeout} s)" if codes is None else f"failed (exit codes {codes})"
        raise AssertionError(f"DDP scenarios {scenarios} {what}:\n{tails}")


def load_rank_results(out: Path, scenario: str) -> list[dict]:
    return [torch.load(out / scenario / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """One launch of 2 gloo processes runs every scenario (the imports dominate the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    launch(list(SCENARIOS), out)
    return out


@pytest.fixture(scope="module")
def equivalence_runs(ddp_out) -> tuple[dict, dict, dict]:
    rank0, rank1 = load_rank_results(ddp_out, "equivalence")
    single = {name: final_state(run_gan(name, "auto", 1)) for name in REGULARIZERS}
    return rank0, rank1, single


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_replicas_stay_bit_identical(equivalence_runs, reg):
    rank0, rank1, _ = equivalence_runs
    a, b = rank0[reg], rank1[reg]
    assert (a["g_steps"], a["d_steps"]) == (b["g_steps"], b["d_steps"]) == (G_STEPS, G_STEPS * N_CRITIC)
    assert a["state"].keys() == b["state"].keys()
    different = [k for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    assert not different, f"{reg}: ranks disagree on {different}"


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_ddp_equals_single_process_on_global_batch(equivalence_runs, reg):
    rank0, _, single = equivalence_runs
    a, s = rank0[reg]["state"], single[reg]["state"]
    L.seed_everything(0, verbose=False)
    init = {**{f"generator.{k}": v for k, v in TinyG().state_dict().items()},
            **{f"discriminator.{k}": v for k, v in TinyD().state_dict().items()}}
    for key, value in s.items():
        if value.is_floating_point():
            # Measured: at most 3e-8 apart (summation order of the all-reduce).
            torch.testing.assert_close(a[key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{reg} {key}: {m}")
        else:
            assert torch.equal(a[key], value), f"{reg} {key}"
    # Not vacuous: training moved every weight of G and D well beyond the tolerance.
    assert all((s[k] - v).abs().max() > 1e-4 for k, v in init.items()), reg


# ---------------------------------------------------------------- replicas, bytes, drop-in
@pytest.mark.parametrize("config", list(REPLICA_CONFIGS))
def test_replicas_bit_identical_after_50_g_steps(ddp_out, config):
    """Default noise differs per rank, so only the gradient all-reduce keeps the replicas together."""
    rank0, rank1 = (r[config] for r in load_rank_results(ddp_out, "replicas"))
    assert (rank0["g_steps"], rank0["d_steps"]) == (REPLICA_G_STEPS, REPLICA_G_STEPS * REPLICA_N_CRITIC)
    assert (rank1["g_steps"], rank1["d_steps"]) == (REPLICA_G_STEPS, REPLICA_G_STEPS * REPLICA_N_CRITIC)
    different = [k for k in rank0["state"] if not torch.equal(rank0["state"][k], rank1["state"][k])]
    assert not different, f"{config}: ranks disagree on {different}"
    # GradScaler took the same decisions on both ranks; an overflow on one rank skipped the step on both.
    assert rank0["scale"] == rank1["scale"] == EXPECTED_SCALE.get(config)
    assert all(torch.isfinite(v).all() for v in rank0["state"].values() if v.is_floating_point())


def test_conditional_replicas_bit_identical(ddp_out):
    """Labels drawn per rank (real ones from the rank's data, fake ones from its own stream): only the gradient
    all-reduce keeps the class-conditional replicas together."""
    rank0, rank1 = load_rank_results(ddp_out, "conditional")
    assert (rank0["g_steps"], rank0["d_steps"]) == (COND_G_STEPS, COND_G_STEPS * COND_N_CRITIC)
    assert rank0["state"].keys() == rank1["state"].keys()
    different = [k for k in rank0["state"] if not torch.equal(rank0["state"][k], rank1["state"][k])]
    assert not different, f"ranks disagree on {different}"
    L.seed_everything(0, verbose=False)
    init = TinyCondG(num_classes=COND_CLASSES).state_dict()
    assert all(not torch.equal(rank0["state"][f"generator.{k}"], v) for k, v in init.items())  # G was trained


def test_bytes_all_reduced_per_g_step_are_the_minimum(ddp_out):
    k = BYTES_N_CRITIC
    for r in load_rank_results(ddp_out, "bytes"):
        now, before = r["now"], r["before"]
        g, d, steps = now["g_params"], now["d_params"], now["g_steps"]
        assert steps == before["g_steps"] == BYTES_G_STEPS
        assert now["reducer"] == {"bytes": 0, "calls": 0}, "DDP's reducer must stay idle"
        assert now["all_reduce"]["calls"] == (k + 1) * steps  # once per optimizer step
        per_g_step = now["all_reduce"]["bytes"] / steps
        minimum = 4 * (g + k * d)
        assert per_g_step <= 1.05 * minimum, (per_g_step, minimum)
        assert per_g_step == 4 * ((g + 1) + k * (d + 1))  # each buffer carries one count element
        # The instrument sees the old way's traffic: both networks at every backward.
        assert before["reducer"]["bytes"] / steps == 4 * (k + 1) * (g + d)


def test_dropin_tutorial_gan_with_plain_ddp_trainer(ddp_out):
    rank0, rank1 = load_rank_results(ddp_out, "dropin")
    for r in (rank0, rank1):
        assert r["g_steps"] == DROPIN_G_STEPS and r["world_size"] == WORLD and r["strategy"] == "DDPStrategy"
    different = [k for k in rank0["params"] if not torch.equal(rank0["params"][k], rank1["params"][k])]
    assert not different, f"ranks disagree on {different}"
    assert rank0["g_loss"] != rank1["g_loss"]  # each rank saw its own data and noise
    # BatchNorm statistics: rank 0's at the start of every step (as DDP's broadcast_buffers), per rank in between.
    assert len(rank0["bn_at_step_start"]) == DROPIN_G_STEPS
    assert torch.equal(rank0["bn_at_step_start"], rank1["bn_at_step_start"])
    assert not torch.equal(rank0["bn_mid_step"][1:], rank1["bn_mid_step"][1:])
    for key, value in rank0["params"].items():
        assert torch.isfinite(value).all() and not torch.equal(value, rank0["initial"][key]), key


def test_all_reduce_gradients_mean_per_dtype_and_clear_error_on_disagreement(ddp_out):
    rank0, rank1 = load_rank_results(ddp_out, "reduction")
    for r in (rank0, rank1):
        assert torch.equal(r["a"], torch.full((3,), 1.5)) and torch.equal(r["b"], torch.full((2,), 15.0, dtype=torch.float64))
        assert r["c_grad_is_none"]  # no gradient on any rank: stays None (the optimizer skips it, as on one process)
        assert r["sent"] == (3 + 1 + 1) * 4 + (2 + 1) * 8  # float32 (a, c, count) and float64 (b, count); not frozen
    assert rank0["error"] is None
    assert "disagree on which parameters" in rank1["error"]


# ---------------------------------------------------------------- random streams under DDP
@pytest.fixture(scope="module")
def stream_runs(ddp_out) -> tuple[list[dict], Path]:
    return load_rank_results(ddp_out, "streams"), ddp_out / "streams"


def test_ranks_draw_different_noise(stream_runs):
    ranks, _ = stream_runs
    # With one seed on every rank, each rank would generate the same fakes: W copies of one fake batch per step.
    assert not torch.equal(ranks[0]["first_noise"], ranks[1]["first_noise"])


def test_ddp_resume_is_bit_exact_on_every_rank(stream_runs):
    ranks, out = stream_runs
    ckpt = torch.load(out / "ckpt" / "step=8.ckpt", weights_only=True)
    rng = ckpt["regan"]["rng"]["cpu"]
    assert rng.shape[0] == WORLD and not torch.equal(rng[0], rng[1]), "the checkpoint must hold every rank's stream"
    for r, rank in enumerate(ranks):
        full, resumed = rank["full"], rank["resumed"]
        assert full["g_steps"] == resumed["g_steps"] == 12
        different = [k for k in full["state"] if not torch.equal(full["state"][k], resumed["state"][k])]
        assert not different, f"rank {r}: the resumed run differs from the uninterrupted one in {different}"
    a, b = ranks[0]["full"]["state"], ranks[1]["full"]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_resume_mid_epoch_is_bit_exact_on_every_rank(ddp_out):
    ckpt = torch.load(ddp_out / "mid_epoch" / "ckpt" / MID_EPOCH_CKPT, weights_only=True)
    assert 0 < ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] < 5  # mid-epoch
    for r, rank in enumerate(load_rank_results(ddp_out, "mid_epoch")):
        full, resumed = rank["full"], rank["resumed"]
        assert full["g_steps"] == resumed["g_steps"] == 10
        different = [k for k in full["state"] if not torch.equal(full["state"][k], resumed["state"][k])]
        assert not different, f"rank {r}: the resumed run differs from the uninterrupted one in {different}"


# ---------------------------------------------------------------- callbacks under DDP
def test_divergence_on_one_rank_stops_every_rank(ddp_out):
    # Reaching this test at all means no rank hung (launch() would have timed out).
    ranks = load_rank_results(ddp_out, "divergence")
    for r in ranks:
        assert r["status"] == "diverged" and r["stop_reason"] == "divergence"
        assert r["should_stop"]
    # D step 3 is G step 3's D step; the stop comes at that G step on both ranks, long before max_steps.
    assert ranks[0]["stopped_g_step"] == ranks[1]["stopped_g_step"] == NAN_D_STEP
    assert ranks[0]["g_steps"] == ranks[1]["g_steps"] < 30
    assert ranks[0]["global_step"] == ranks[1]["global_step"]


def test_fid_is_the_same_on_every_rank(ddp_out):
    ranks = load_rank_results(ddp_out, "fid")
    assert [g for g, _ in ranks[0]["history"]] == [4, 8, 12]
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["logged"] == ranks[1]["logged"]
    assert ranks[0]["logged"] == pytest.approx(ranks[0]["history"][-1][1], rel=1e-6)  # logged as float32
    assert all(f > 0 for _, f in ranks[0]["history"])


# ---------------------------------------------------------------- regan-train trainer=ddp_cpu
@pytest.mark.parametrize("name, backend", [("ddp", None), ("ddp_cpu", "gloo")])
def test_trainer_configs_use_the_proven_strategy(name, backend):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_regan.config import compose_config

    cfg = compose_config([f"trainer={name}"]).trainer.strategy
    assert "find_unused_parameters" not in cfg and "static_graph" not in cfg  # plain DDP, as the tests above run
    strategy = instantiate(cfg)
    assert isinstance(strategy, DDPStrategy)
    assert strategy.process_group_backend == backend



def test_regan_train_ddp_cpu_end_to_end(tmp_path):
    """Lightning's own launcher under Hydra re-runs the command for rank 1; both ranks write one run."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    cmd = [
        sys.executable, "-m", "lightning_regan.cli.train", "trainer=ddp_cpu", "data=gaussians", "data.n_samples=2048",
        "data.batch_size=64", "model=mlp", "model.generator.hidden=[64,64]", "model.discriminator.hidden=[64,64]",
        "regularizer=[r1,lecam]", "max_g_steps=10", "callbacks.fid.every_n_g_steps=5", "callbacks.fid.num_samples=128",
        "callbacks.samples.every_n_g_steps=0", "trainer.enable_progress_bar=false", f"output_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["status"] == "completed" and summary["g_steps"] == 10
    assert [g for g, _ in summary["fid_history"]] == [5, 10]
    assert {"train/d_reg/r1", "train/d_reg/lecam"} <= set(summary["final_metrics"])
    assert (out / "checkpoints" / "last.ckpt").is_file()


if __name__ == "__main__":
    for _name in sys.argv[1].split(","):
        SCENARIOS[_name](Path(sys.argv[2]))
    # Tear the process group down before the interpreter exits: left to interpreter shutdown, gloo's threads can
    # abort the process ("terminate called without an active exception", exit -6) after every scenario passed.
    if dist.is_initialized():
        dist.destroy_process_group()

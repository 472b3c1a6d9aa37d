"""Crash-safe resume: counters, EMA, regularizer and callback state, random streams, and the stop decision.

In-process tests check that ``fit(ckpt_path=...)`` continues a run bit for bit. The end-to-end test kills a real
``regan-train`` process with SIGKILL two G steps after a checkpoint and resumes it with ``ckpt_path=last``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.regularizers import WGANGP, LeCam, R1

from helpers import TinyD, TinyG

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 4


def shuffled_loader() -> DataLoader:
    """Shuffled without an explicit generator: each epoch's order is drawn from the global random stream."""
    x = torch.randn(BATCHES_PER_EPOCH * 16, 2, generator=torch.Generator().manual_seed(3)) * 0.5 + 1.0
    return DataLoader(TensorDataset(x), batch_size=16, shuffle=True, drop_last=True)


def make_module() -> GANModule:
    regs = {"wgan_gp": WGANGP(1.0), "lecam": LeCam(0.1, decay=0.9), "r1": R1(1.0, every=2)}
    return GANModule(TinyG(), TinyD(), regularizers=regs, ema_decay=0.9,
                     d_optimizer=functools.partial(torch.optim.Adam, lr=1e-3))


def fit(g_steps: int, ckpt_dir: Optional[Path] = None, ckpt_path: Optional[str] = None) -> GANModule:
    """Seeded run of ``g_steps`` G steps; checkpoints every batch into ``ckpt_dir``, resumes from ``ckpt_path``."""
    L.seed_everything(7, verbose=False)
    module = make_module()
    callbacks = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1,
                                         filename="{step}"))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps_for(g_steps, 1), logger=False, callbacks=callbacks,
        enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, shuffled_loader(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module


def test_resume_at_epoch_end_continues_bit_for_bit(tmp_path):
    full = fit(3 * BATCHES_PER_EPOCH, ckpt_dir=tmp_path)
    # global_step counts D and G updates: one epoch = 4 batches = 8 optimizer steps.
    ckpt = tmp_path / f"step={2 * BATCHES_PER_EPOCH}.ckpt"
    assert ckpt.is_file()
    resumed = fit(3 * BATCHES_PER_EPOCH, ckpt_path=str(ckpt))
    assert (resumed.g_steps, resumed.d_steps) == (full.g_steps, full.d_steps) == (12, 12)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    # G, D, EMA of G (and its n_averaged), LeCam anchors: the same bits as the uninterrupted run.
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_without_restored_random_streams_the_resume_would_differ(tmp_path):
    """The premise of the test above: the continuation depends on the random stream, so restoring it matters."""
    full = fit(3 * BATCHES_PER_EPOCH, ckpt_dir=tmp_path)
    ckpt = tmp_path / f"step={2 * BATCHES_PER_EPOCH}.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["regan"]["rng"]
    stripped = tmp_path / "no_rng.ckpt"
    torch.save(state, stripped)
    resumed = fit(3 * BATCHES_PER_EPOCH, ckpt_path=str(stripped))
    assert resumed.g_steps == full.g_steps
    assert not torch.equal(full.generator.net[0].weight, resumed.generator.net[0].weight)


def test_mid_epoch_resume_continues_the_noise_stream(tmp_path, monkeypatch):
    """Mid-epoch, Lightning re-shuffles a plain DataLoader (data order differs), but the noise continues exactly."""
    drawn: list[tuple[int, torch.Tensor]] = []
    original = GANModule.sample_noise

    def recording(self, n):
        z = original(self, n)
        drawn.append((self.d_steps, z.clone()))
        return z

    monkeypatch.setattr(GANModule, "sample_noise", recording)
    fit(BATCHES_PER_EPOCH, ckpt_dir=tmp_path)
    full = dict(drawn[::2])  # D-step noise (the G step's draw follows each)
    drawn.clear()
    resumed = fit(BATCHES_PER_EPOCH, ckpt_path=str(tmp_path / "step=4.ckpt"))  # after 2 of 4 batches
    assert resumed.g_steps == BATCHES_PER_EPOCH
    first_step, first_noise = drawn[0]
    assert first_step == 2
    assert torch.equal(first_noise, full[2])


def test_checkpoint_holds_random_states_and_loads_weights_only(tmp_path):
    fit(BATCHES_PER_EPOCH, ckpt_dir=tmp_path)
    state = torch.load(tmp_path / "step=2.ckpt", weights_only=True)
    rng = state["regan"]["rng"]
    assert rng["cpu"].dtype == torch.uint8 and rng["cpu"].shape[0] == 1  # one row per rank
    assert state["regan"]["g_steps"] == 1


def test_load_from_checkpoint_does_not_touch_the_callers_random_stream(tmp_path):
    fit(BATCHES_PER_EPOCH, ckpt_dir=tmp_path)
    torch.manual_seed(123)
    expected = torch.rand(3)
    parts = dict(generator=TinyG(), discriminator=TinyD(), regularizers=dict(make_module().regularizers))
    torch.manual_seed(123)
    m = GANModule.load_from_checkpoint(tmp_path / "step=2.ckpt", weights_only=True, **parts)
    assert m.g_steps == 1
    assert torch.equal(torch.rand(3), expected)


def fit_datamodule(g_steps: int, ckpt_dir: Optional[Path] = None, ckpt_path: Optional[str] = None) -> GANModule:
    """Like :func:`fit`, with the product's data pipeline (GaussianMixtureDataModule, 5 batches per epoch)."""
    from lightning_regan.data import GaussianMixtureDataModule

    L.seed_everything(7, verbose=False)
    module = make_module()
    callbacks = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, filename="{step}"))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps_for(g_steps, 1), logger=False, callbacks=callbacks,
        enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
    )
    datamodule = GaussianMixtureDataModule(n_samples=80, n_reference=16, batch_size=16)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module


def test_mid_epoch_resume_with_the_datamodule_loader_is_bit_exact(tmp_path):
    """The data modules' StatefulDataLoader is restored mid-epoch: same batches, same noise, same weights."""
    full = fit_datamodule(12, ckpt_dir=tmp_path)
    # 5 batches per epoch; global_step 14 = G step 7 = batch 2 of the second epoch.
    ckpt = tmp_path / "step=14.ckpt"
    assert torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    resumed = fit_datamodule(12, ckpt_path=str(ckpt))
    assert (resumed.g_steps, resumed.d_steps) == (full.g_steps, full.d_steps) == (12, 12)
    a, b = full.state_dict(), resumed.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ----------------------------------------------------------------------------- regan-train killed and resumed
KILL_AT_G_STEP = 12
FID_EVERY = 5
BATCH = 64
RUN_OVERRIDES = [
    "data=gaussians", "model=mlp", "model.generator.hidden=[64,64]", "model.discriminator.hidden=[64,64]",
    f"data.batch_size={BATCH}",
    # 7 batches per epoch: the checkpoints (taken at FID evaluations, every 5 G steps) fall mid-epoch, where only a
    # resumable data pipeline (the data modules' StatefulDataLoader) continues with the same batches.
    f"data.n_samples={BATCH * 7}",
    "regularizer=[r1,lecam]", "module.ema_decay=0.9", "max_g_steps=60",
    f"callbacks.fid.every_n_g_steps={FID_EVERY}", "callbacks.fid.num_samples=256", "callbacks.samples.every_n_g_steps=0",
    "early_stopping=fid", "early_stopping.rules.metric_plateau.patience=2",
    "early_stopping.rules.metric_plateau.window=1", "early_stopping.rules.metric_plateau.min_delta=0.2",
    "early_stopping.rules.metric_plateau.warmup_g_steps=0", "early_stopping.rules.divergence.warmup_g_steps=0",
    "logger=csv", "trainer.enable_progress_bar=false",
]


def regan_train(out: Path, *extra: str, kill_at: int = 0) -> subprocess.Popen:
    """Start ``regan-train`` (``python -m lightning_regan.cli.train``) writing into ``out``.

    With ``kill_at`` the run SIGKILLs itself at the first batch after G step ``kill_at`` once a checkpoint exists
    (a deterministic stand-in for a crash or a pre-empted node: no cleanup, no summary, no final checkpoint).
    """
    # One torch thread per process: runs overlap on few cores, and oversubscribed threads are ~30x slower.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1")
    args = [*RUN_OVERRIDES, f"output_dir={out}", f"hydra.run.dir={out}/hydra", *extra]
    if kill_at:
        env["REGAN_TEST_KILL_AT_G_STEP"] = str(kill_at)
        cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    else:
        cmd = [sys.executable, "-m", "lightning_regan.cli.train", *args]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out.parent)


def wait(proc: subprocess.Popen, out: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"regan-train did not finish in {timeout} s:\n" + (out.parent / f"{out.name}.log").read_text()[-4000:])


def read_summary(out: Path) -> dict:
    path = out / "summary.json"
    assert path.is_file(), (out.parent / f"{out.name}.log").read_text()[-4000:]
    return json.loads(path.read_text())


def test_sigkilled_run_resumed_with_ckpt_path_last_matches_the_uninterrupted_run(tmp_path):
    full_dir, crash_dir = tmp_path / "full", tmp_path / "crash"
    full = regan_train(full_dir)  # the two first runs share the 2 cores
    crash = regan_train(crash_dir, kill_at=KILL_AT_G_STEP)
    assert wait(crash, crash_dir) == -signal.SIGKILL
    assert not (crash_dir / "summary.json").exists()
    last = crash_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # plain tensors and containers: safe to load weights_only
    assert ckpt["regan"]["g_steps"] == 10  # the last FID evaluation before the kill, in epoch 2
    assert 0 < ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] < 7  # mid-epoch
    before = next(v for k, v in ckpt["callbacks"].items() if k.startswith("RunSummary"))["wall_time_s"]

    resumed = regan_train(crash_dir, "ckpt_path=last")
    assert wait(resumed, crash_dir) == 0
    assert wait(full, full_dir) == 0
    a, b = read_summary(full_dir), read_summary(crash_dir)
    # The premise: the run stops early on the FID plateau after the kill, so the restored wait count matters.
    assert a["stop_reason"] == "plateau" and a["g_steps"] == 15
    for key in ("status", "stop_reason", "g_steps", "d_steps", "best_fid_step", "stopped_g_step", "world_size"):
        assert b[key] == a[key], key
    # Random streams restored too: the FID values themselves are reproduced exactly.
    assert b["fid_history"] == a["fid_history"]
    assert b["best_fid"] == a["best_fid"]
    wa = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(last, weights_only=True)["state_dict"]
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    # wall_time_s covers the whole run: the part before the checkpoint is carried over.
    assert 0 < before < b["wall_time_s"]


def _main_that_kills_itself() -> None:
    """``python tests/test_resume.py <overrides>``: regan-train plus a callback that SIGKILLs the process."""
    from lightning.pytorch.callbacks import Callback

    import lightning_regan.builders as builders
    from lightning_regan.cli.entry import main

    kill_at = int(os.environ["REGAN_TEST_KILL_AT_G_STEP"])

    class KillAfterCheckpoint(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pl_module.g_steps >= kill_at and (Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt").exists():
                os.kill(os.getpid(), signal.SIGKILL)

    build = builders.build_callbacks
    builders.build_callbacks = lambda cfg: [*build(cfg), KillAfterCheckpoint()]
    main()


if __name__ == "__main__":
    _main_that_kills_itself()

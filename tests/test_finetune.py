"""Fine-tuning: ``init_from`` (weights from a trained GAN, everything else fresh), FreezeD and ``data.classes``.

A module-scoped fixture pretrains a tiny DCGAN on digits through ``regan-train``'s ``train()`` (20 G steps); the tests
fine-tune from its checkpoint: weights at step 0, fresh optimizers, counters and callback state, an exact resume of
the fine-tune, mismatches refused in one line, plain state-dict files, FreezeD and DDP on CPU.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.cli.checks import check_values
from lightning_regan.cli.train import train
from lightning_regan.config import compose_config
from lightning_regan.data.base import DatasetError, GANDataModule
from lightning_regan.errors import ConfigError, PretrainedWeightsError
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, ResNetDiscriminator

from helpers import TinyD, TinyG, point_loader, quiet_trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
#: A tiny digits run: 8x8 DCGAN of width 4, an evaluation (and a checkpoint) every 5 G steps.
TINY = [
    "model.generator.channels=4", "model.discriminator.channels=4", "data.batch_size=32",
    "callbacks.fid.every_n_g_steps=5", "callbacks.fid.num_samples=64", "callbacks.fid.noise_draws=0",
    "callbacks.samples.every_n_g_steps=0", "callbacks.overfitting.every_n_g_steps=0", "logger=none",
    "trainer.enable_progress_bar=false", "module.ema_decay=0.9",
]


def run_train(out: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_config([*TINY, *overrides, f"output_dir={out}"])
    summary, _ = train(cfg)
    return summary


def _plain(value: Any) -> Any:
    """A callback state as plain, comparable Python values."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):  # aside: the wall time runs from on_fit_start; the extractor is resolved at setup
        return {k: _plain(v) for k, v in value.items() if k not in ("wall_time_s", "extractor")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """``last.ckpt`` of 20 G steps on digits 0-4 (its callbacks hold evaluations, its optimizers moments)."""
    out = tmp_path_factory.mktemp("pretrain")
    summary = run_train(out, "max_g_steps=20", "data.classes=[0,1,2,3,4]")
    assert summary["g_steps"] == 20 and summary["init_from"] is None
    return out / "checkpoints" / "last.ckpt"


class Probe(Callback):
    """Records the module, optimizers and callbacks as training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: GANModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizer_states = [len(opt.state) for opt in trainer.optimizers]
        self.steps = (pl_module.g_steps, pl_module.d_steps, trainer.global_step)
        self.max_steps = trainer.max_steps
        self.callbacks = {type(cb).__name__: _plain(cb.state_dict()) for cb in trainer.callbacks
                          if type(cb).__name__ in ("EarlyTermination", "BestGenerator", "FIDMonitor", "RunSummary")}


def probed(monkeypatch) -> Probe:
    """Attach a :class:`Probe` to the Trainer that ``train()`` builds."""
    from lightning_regan import builders

    probe, original = Probe(), builders.fit

    def fit(objects, ckpt_path):
        objects["trainer"].callbacks.append(probe)
        probe.cfg = objects["cfg"]
        return original(objects, ckpt_path)

    monkeypatch.setattr(builders, "fit", fit)
    return probe


# ----------------------------------------------------------------------------------------------- init_from
def test_init_from_starts_from_the_checkpoints_weights_with_everything_else_fresh(pretrained, tmp_path, monkeypatch):
    probe = probed(monkeypatch)
    summary = run_train(tmp_path / "ft", "max_g_steps=10", "data.classes=[5,6,7,8,9]", "data.limit=200",
                        "augment=diffaugment", f"init_from={pretrained}")
    ckpt = torch.load(pretrained, weights_only=True)
    state = ckpt["state_dict"]
    # Weights at step 0: G, D and the EMA of G are the checkpoint's, bit for bit.
    parts = [k for k in state if k.startswith(("generator.", "discriminator.", "ema_generator.module."))]
    assert parts and [k for k in parts if not torch.equal(probe.weights[k], state[k])] == []
    # Fresh: optimizer moments, G/D steps, the budget, every callback's state (the checkpoint's are not fresh).
    assert probe.optimizer_states == [0, 0]
    assert probe.steps == (0, 0, 0) and probe.max_steps == max_steps_for(10, 1)
    from lightning_regan.builders import build_callbacks

    fresh = {type(cb).__name__: _plain(cb.state_dict()) for cb in build_callbacks(probe.cfg)
             if type(cb).__name__ in probe.callbacks}
    assert set(fresh) == {"EarlyTermination", "BestGenerator", "FIDMonitor", "RunSummary"}
    # RunSummary starts following the stop metric at the start of the fit: an empty history is still fresh.
    started = probe.callbacks["RunSummary"].pop("stop_metric")
    assert started["history"] == [] and started["last_step"] is None
    assert probe.callbacks == fresh
    stored = {k.split("{")[0]: _plain(v) for k, v in ckpt["callbacks"].items()}
    assert stored["FIDMonitor"] != fresh["FIDMonitor"] and stored["RunSummary"] != fresh["RunSummary"]
    # The run trained its own budget and says where it started from.
    assert summary["g_steps"] == 10 and summary["status"] == "completed"
    assert summary["init_from"] == {"path": str(pretrained.resolve()), "kind": "regan_checkpoint",
                                    "parts": ["generator", "discriminator", "ema"], "g_steps": 20}
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["init_from"] == summary["init_from"]


def test_init_from_parts_loads_only_the_chosen_parts(pretrained, tmp_path, monkeypatch):
    probe = probed(monkeypatch)
    summary = run_train(tmp_path / "ft", "max_g_steps=2", f"init_from={pretrained}", "init_from_parts=[generator]")
    state = torch.load(pretrained, weights_only=True)["state_dict"]
    assert torch.equal(probe.weights["generator.project.0.weight"], state["generator.project.0.weight"])
    assert not torch.equal(probe.weights["discriminator.net.0.weight"], state["discriminator.net.0.weight"])
    assert not torch.equal(probe.weights["ema_generator.module.project.0.weight"],
                           state["ema_generator.module.project.0.weight"])
    assert summary["init_from"]["parts"] == ["generator"]


def test_resume_of_a_finetune_with_ckpt_path_last_is_exact(pretrained, tmp_path):
    ft = [f"init_from={pretrained}", "max_g_steps=20", "data.classes=[5,6,7,8,9]", "data.limit=200",
          "callbacks.checkpoint.save_top_k=-1", "callbacks.checkpoint.filename='{step}'"]
    full = run_train(tmp_path / "full", *ft)
    mid = tmp_path / "full" / "checkpoints" / "step=20.ckpt"  # global step 20 = G step 10
    assert torch.load(mid, weights_only=True)["regan"]["g_steps"] == 10
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(mid, tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    # The init_from file is not read on a resume (the weights come from last.ckpt): it may be gone by then.
    gone = tmp_path / "gone.ckpt"
    resumed = run_train(tmp_path / "resumed", *[o.replace(str(pretrained), str(gone)) for o in ft], "ckpt_path=last")
    for key in ("status", "g_steps", "d_steps", "fid_history", "best_fid", "best_fid_step", "stopped_g_step"):
        assert resumed[key] == full[key], key
    assert resumed["init_from"] == full["init_from"] and full["init_from"]["path"] == str(pretrained.resolve())
    # (The copied last.ckpt is another run's file to Lightning, which writes last-v1.ckpt beside it: compare by step.)
    a = torch.load(tmp_path / "full" / "checkpoints" / "step=40.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "step=40.ckpt", weights_only=True)
    assert a["regan"]["g_steps"] == b["regan"]["g_steps"] == 20
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []


def test_mismatched_networks_are_refused_in_one_line_naming_the_tensor(pretrained, tmp_path):
    out = tmp_path / "bad"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lightning_regan.cli.entry", *TINY, "model.generator.channels=8",
           f"init_from={pretrained}", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("regan-train: error:")]
    assert len(errors) == 1, proc.stderr
    assert "generator tensor 'project.0.weight' has shape [128, 64]" in errors[0] and "[256, 64] in this run" in errors[0]
    assert "model.generator.channels: 4 vs 8" in errors[0] and "nothing was loaded" in errors[0]
    assert not (out / "summary.json").exists() and not (out / "checkpoints").exists()


def test_a_mismatch_loads_nothing(pretrained):
    generator = DCGANGenerator(64, [1, 8, 8], channels=4)
    module = GANModule(generator, DCGANDiscriminator([1, 8, 8], channels=8), ema_decay=0.9)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(PretrainedWeightsError, match=r"^discriminator tensor 'net.0.weight' has shape \[4, 1, 3, 3\]"):
        module.load_pretrained(pretrained)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # G matched, yet untouched
    assert module.initialized_from is None


def test_a_plain_state_dict_file_in_either_layout(tmp_path):
    torch.manual_seed(0)
    source = GANModule(TinyG(), TinyD(), ema_decay=0.9)
    nested = tmp_path / "nested.pt"
    torch.save({"generator": source.generator.state_dict(), "discriminator": source.discriminator.state_dict()}, nested)
    flat = tmp_path / "flat.pt"
    torch.save(source.state_dict(), flat)

    module = GANModule(TinyG(), TinyD(), ema_decay=0.9)
    record = module.load_pretrained(nested)
    assert record == {"path": str(nested.resolve()), "kind": "state_dict", "parts": ["generator", "discriminator"],
                      "g_steps": None}
    for name, value in source.state_dict().items():
        if name.startswith(("generator.", "discriminator.")):
            assert torch.equal(module.state_dict()[name], value), name
    assert int(module.ema_generator.n_averaged) == 0  # no EMA in the file: it starts from G at the first G step

    module = GANModule(TinyG(), TinyD(), ema_decay=0.9)
    assert module.load_pretrained(flat)["parts"] == ["generator", "discriminator", "ema"]
    assert torch.equal(module.ema_generator.module.net[0].weight, source.ema_generator.module.net[0].weight)
    assert int(module.ema_generator.n_averaged) == 1  # loaded: the next update averages into it

    # A mapping already in memory; and a choice of parts the file lacks.
    module = GANModule(TinyG(), TinyD())
    assert module.load_pretrained({"generator": source.generator.state_dict()})["parts"] == ["generator"]
    with pytest.raises(PretrainedWeightsError, match="has no discriminator weights"):
        GANModule(TinyG(), TinyD()).load_pretrained({"generator": source.generator.state_dict()},
                                                     parts=["generator", "discriminator"])
    with pytest.raises(PretrainedWeightsError, match="keeps no EMA of G"):
        GANModule(TinyG(), TinyD()).load_pretrained(flat, parts=["ema"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_damaged_or_foreign_files_are_refused(tmp_path):
    module = GANModule(TinyG(), TinyD())
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"generator": {}}))
    evil = tmp_path / "evil.pt"
    torch.save({"generator": _Evil()}, evil)
    nan = tmp_path / "nan.pt"
    state = TinyG().state_dict()
    state["net.0.weight"][0, 0] = float("nan")
    torch.save({"generator": state}, nan)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    cases = [(tmp_path / "none.pt", "does not exist"), (raw, "raw pickle"), (evil, "never loaded"),
             (nan, "'net.0.weight' holds NaN/inf"), (other, "holds no generator or discriminator weights")]
    for path, message in cases:
        with pytest.raises(PretrainedWeightsError, match=message) as info:
            module.load_pretrained(path)
        assert "\n" not in str(info.value)


def test_config_checks_answer_before_any_work(tmp_path):
    existing = tmp_path / "w.pt"
    existing.write_bytes(b"")
    cases = [
        ([f"init_from={tmp_path / 'none.ckpt'}"], "does not exist"),
        ([f"init_from={existing}", "init_from_parts=[generator,critic]"], "init_from_parts must list distinct parts"),
        ([f"init_from={existing}", "init_from_parts=[generator,generator]"], "init_from_parts must list distinct parts"),
        (["init_from_parts=[generator]"], "init_from_parts is set but init_from is not"),
        (["module.freeze_d_layers=-1"], "module.freeze_d_layers must be an integer >= 0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_values(compose_config([*overrides, f"output_dir={tmp_path}"]))
    check_values(compose_config([f"init_from={existing}", "init_from_parts=[ema,discriminator]", f"output_dir={tmp_path}"]))


# ----------------------------------------------------------------------------------------------- FreezeD
def _frozen_names(module: GANModule) -> set[str]:
    return {n for n, p in module.discriminator.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("discriminator, blocks, first_two", [
    (DCGANDiscriminator([1, 8, 8], channels=4), 2, {"net.0", "net.2"}),
    (DCGANDiscriminator([1, 28, 28], channels=4, norm="layer"), 3, {"net.0", "net.2", "net.3"}),
    (ResNetDiscriminator([1, 32, 32], channels=4), 4, {"blocks.0", "blocks.1"}),
    (MLPDiscriminator([2], hidden=[8, 8, 8]), 3, {"net.1", "net.3"}),
])
def test_freeze_d_layers_freezes_exactly_the_first_k_blocks(discriminator, blocks, first_two):
    assert len(discriminator.freezable_blocks()) == blocks
    module = GANModule(TinyG(4, 2), discriminator, latent_dim=4, freeze_d_layers=2)
    assert {".".join(n.split(".")[:2]) for n in _frozen_names(module)} == first_two
    trainable = [p for p in discriminator.parameters() if p.requires_grad]
    assert trainable  # the head and the later blocks
    d_opt = module.configure_optimizers()[1]
    in_opt = {id(p) for group in d_opt.param_groups for p in group["params"]}
    assert in_opt == {id(p) for p in trainable}
    def modes(block: nn.Module) -> set[bool]:
        return {m.training for m in block.children()} or {block.training}

    assert all(modes(b) == {False} for b in module.frozen_d_blocks)
    module.train()  # as Lightning does at the start of fit: the frozen blocks stay in eval mode
    assert all(modes(b) == {False} for b in module.frozen_d_blocks)
    assert discriminator.training and all(modes(b) == {True} for b in discriminator.freezable_blocks()[2:])
    with pytest.raises(ValueError, match=f"freeze_d_layers={blocks + 1} exceeds the {blocks} blocks"):
        GANModule(TinyG(4, 2), discriminator, latent_dim=4, freeze_d_layers=blocks + 1)


def test_a_discriminator_without_the_hook_is_refused_clearly():
    with pytest.raises(ValueError, match=r"TinyD has no freezable_blocks\(\) method"):
        GANModule(TinyG(), TinyD(), freeze_d_layers=1)
    GANModule(TinyG(), TinyD(), freeze_d_layers=0)  # nothing to freeze: no hook needed


class HookedD(nn.Module):
    """A user's discriminator that lists its blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2))
        self.head = nn.Linear(16, 1)

    def freezable_blocks(self) -> list[nn.Module]:
        return [self.stem, self.body]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x))).squeeze(1)


def test_frozen_blocks_do_not_change_during_training():
    torch.manual_seed(0)
    d = HookedD()
    module = GANModule(TinyG(), d, freeze_d_layers=2)
    before = {k: v.clone() for k, v in d.state_dict().items()}  # BatchNorm's running statistics included
    quiet_trainer(max_steps=max_steps_for(15, 1)).fit(module, point_loader())
    assert module.g_steps == 15
    after = d.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["head.weight", "head.bias"]
    assert not any(p.requires_grad for b in d.freezable_blocks() for p in b.parameters())


def test_freezed_after_init_from_keeps_the_pretrained_blocks(pretrained, tmp_path):
    run_train(tmp_path / "ft", "max_g_steps=10", f"init_from={pretrained}", "module.freeze_d_layers=1")
    a = torch.load(pretrained, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(a["discriminator.net.0.weight"], b["discriminator.net.0.weight"])
    assert not torch.equal(a["discriminator.net.2.weight"], b["discriminator.net.2.weight"])


# ----------------------------------------------------------------------------------------------- data.classes
def test_data_classes_filters_train_heldout_and_reference_alike(tmp_path):
    from lightning_regan.builders import build_datamodule
    from lightning_regan.data.base import dataset_labels

    cfg = compose_config(["data.classes=[5,6,7,8,9]", "data.limit=300", f"output_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    labels = {name: set(dataset_labels(ds).tolist()) for name, ds in
              (("train", dm.train_dataset()), ("heldout", dm.heldout_dataset()), ("reference", dm.reference_dataset()))}
    assert labels == {name: {5, 6, 7, 8, 9} for name in labels}
    assert len(dm.train_dataset()) == 300
    assert len(dm.train_dataset()) + len(dm.heldout_dataset()) == len(dm.reference_dataset()) == 896
    unfiltered = build_datamodule(compose_config([f"output_dir={tmp_path}"]))
    assert dm.cache_key() != unfiltered.cache_key()  # other FID statistics
    with pytest.raises(Exception, match=r"classes must be a non-empty list of distinct labels in \[0, 10\)"):
        build_datamodule(compose_config(["data.classes=[3,10]", f"output_dir={tmp_path}"]))


class Unlabelled(GANDataModule):
    shape = (2,)

    def _build_train(self):
        return TensorDataset(torch.randn(64, 2))

    def _build_reference(self):
        return self._build_train()

    def _identity(self):
        return {}


def test_data_classes_on_unlabelled_data_says_so():
    with pytest.raises(DatasetError, match=r"classes=\[1\] needs labelled data"):
        Unlabelled(batch_size=8, classes=[1]).setup("fit")


def test_data_classes_on_mnist(shared_data):
    from lightning_regan.data import MNISTDataModule

    dm = MNISTDataModule(root=shared_data, classes=[5, 6, 7, 8, 9], limit=600, reference_split="test")
    dm.validate()
    assert len(dm.train_dataset()) == 600 and len(dm.heldout_dataset()) == 29404 - 600
    assert len(dm.reference_dataset()) == 4861  # the test split's digits 5-9


# ----------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow  # two DDP processes on CPU through regan-train (~40 s)
def test_init_from_under_ddp_on_cpu(pretrained, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "lightning_regan.cli.train", "trainer=ddp_cpu", *TINY, "max_g_steps=10",
           f"init_from={pretrained}", "module.freeze_d_layers=1", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["g_steps"] == 10 and summary["status"] == "completed"
    assert summary["init_from"]["parts"] == ["generator", "discriminator", "ema"]
    a = torch.load(pretrained, weights_only=True)["state_dict"]
    b = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(a["discriminator.net.0.weight"], b["discriminator.net.0.weight"])  # frozen on both ranks
    assert not torch.equal(a["generator.project.0.weight"], b["generator.project.0.weight"])  # trained from it

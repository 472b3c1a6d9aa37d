"""lightning_regan.augment: DiffAugment and ADA ops, p's adaptation and its place in the training state, the module's
use of them (every image D sees), R1 with augmentation, DDP agreement of p, configs and ``data.limit``."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regan import GANModule, max_steps_for
from lightning_regan.augment import AdaptiveAugment, DiffAugment
from lightning_regan.augment.ada import GROUPS
from lightning_regan.regularizers import R1, WGANGP, LeCam, R2

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)


def images(n: int = 16, channels: int = 1, side: int = 8, seed: int = 0) -> Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class ImgG(nn.Module):
    def __init__(self, latent_dim: int = 4, shape: tuple[int, ...] = SHAPE) -> None:
        super().__init__()
        self.latent_dim, self.shape = latent_dim, shape
        self.net = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, math.prod(shape)), nn.Tanh())

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class ImgD(nn.Module):
    def __init__(self, shape: tuple[int, ...] = SHAPE, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        self.embed = nn.Embedding(num_classes, math.prod(shape)) if num_classes else None

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        out = self.net(x)
        if y is not None:
            out = out + (self.embed(y) * x.flatten(1)).sum(1, keepdim=True)
        return out


def image_loader(n: int = 64, batch_size: int = 16, labels: bool = False) -> DataLoader:
    """Shuffled, resumable mid-epoch (the product's loader type)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    x = images(n, seed=3)
    ds = TensorDataset(x, torch.arange(n) % 3) if labels else TensorDataset(x)
    return StatefulDataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True)


def quiet(**kw: Any) -> L.Trainer:
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    opts.update(kw)
    return L.Trainer(**opts)


# ---------------------------------------------------------------- the ops
DIFF_OPS = ["brightness", "saturation", "contrast", "translation", "cutout", "color,translation,cutout"]


@pytest.mark.parametrize("policy", DIFF_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_diffaugment_op_keeps_shape_and_its_documented_range(policy, channels):
    x = images(32, channels)
    y = DiffAugment(policy, seed=0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    if policy == "brightness":  # one offset in [-0.5, 0.5) per image
        shift = (y - x).flatten(1)
        assert shift.abs().max() <= 0.5 and torch.allclose(shift.max(1).values, shift.min(1).values, atol=1e-6)
    elif policy == "contrast":  # factor in [0.5, 1.5) about the image mean, which is kept
        assert torch.allclose(y.mean(dim=[1, 2, 3]), x.mean(dim=[1, 2, 3]), atol=1e-5)
        dev_x, dev_y = (t - t.mean(dim=[1, 2, 3], keepdim=True) for t in (x, y))
        ratio = dev_y.flatten(1).norm(dim=1) / dev_x.flatten(1).norm(dim=1)
        assert ((ratio >= 0.5 - 1e-5) & (ratio < 1.5 + 1e-5)).all()
    elif policy == "saturation":  # the channel mean of each pixel is kept; grey images are unchanged
        assert torch.allclose(y.mean(1), x.mean(1), atol=1e-5)
        if channels == 1:
            assert torch.allclose(y, x)
    elif policy in ("translation", "cutout"):  # pixels move or become 0: values stay in [min(x, 0), max(x, 0)]
        assert y.min() >= min(x.min(), 0) and y.max() <= max(x.max(), 0)
        assert not torch.equal(y, x)
    else:  # the whole policy changes every image
        assert all(not torch.equal(a, b) for a, b in zip(x, y))


def test_diffaugment_translation_is_a_whole_pixel_shift_and_cutout_a_half_size_square():
    x = images(16, 1, side=8)
    t = DiffAugment("translation", seed=1)(x)
    for a, b in zip(x, t):
        shifted = [torch.roll(torch.nn.functional.pad(a, [1, 1, 1, 1]), (dy, dx), (1, 2))[:, 1:-1, 1:-1]
                   for dy in range(-1, 2) for dx in range(-1, 2)]
        assert any(torch.equal(b, s) for s in shifted)  # ratio 1/8 of 8 pixels: shifts of -1..1, zeros enter
    c = DiffAugment("cutout", seed=1)(torch.ones(16, 1, 8, 8))
    zeros = (c == 0).flatten(1).sum(1)
    assert (zeros <= 16).all() and (zeros >= 4).all()  # a 4x4 square, clipped at the border


def test_diffaugment_empty_policy_is_the_identity_and_bad_policy_says_what_exists():
    x = images()
    assert torch.equal(DiffAugment("", seed=0)(x), x)
    with pytest.raises(ValueError, match="unknown policy entry 'blur'.*color, translation, cutout"):
        DiffAugment("color,blur")
    with pytest.raises(ValueError, match="expects image batches"):
        DiffAugment()(torch.randn(4, 2))


@pytest.mark.parametrize("ops", ["bgc", "b", "g", "c", *[op for group in GROUPS.values() for op in group]])
@pytest.mark.parametrize("channels", [1, 3])
def test_ada_identity_at_p0_shape_and_range(ops, channels):
    x = images(32, channels)
    assert torch.equal(AdaptiveAugment(p=0.0, ops=ops, seed=0)(x), x)
    y = AdaptiveAugment(p=1.0, ops=ops, seed=0)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)
    if set(ops.split(",")) <= set(GROUPS["b"] + GROUPS["g"]) or ops in ("b", "g"):
        # geometric ops resample with reflection padding: values stay within the image's range
        assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5


def test_ada_blit_ops_are_exact_flips_rotations_and_shifts():
    x = images(32, 1)
    flipped = AdaptiveAugment(p=1.0, ops="xflip", seed=0)(x)
    rotated = AdaptiveAugment(p=1.0, ops="rotate90", seed=0)(x)
    for a, f, r in zip(x, flipped, rotated):
        assert any(torch.allclose(f, c, atol=1e-5) for c in (a, a.flip(-1)))
        assert any(torch.allclose(r, a.rot90(k, (1, 2)), atol=1e-5) for k in range(4))
    assert sum(not torch.allclose(f, a, atol=1e-5) for a, f in zip(x, flipped)) >= 8  # about half are flipped
    shifted = AdaptiveAugment(p=1.0, ops="xint", seed=0)(x)  # integer shifts: every value is one of the image's
    for a, s in zip(x, shifted):
        assert torch.isclose(s.reshape(-1, 1), a.reshape(1, -1), atol=1e-5).any(1).all()


def test_ada_colour_ops_act_about_the_luma_axis():
    x = images(64, 3)
    grey = images(64, 1).expand(64, 3, 8, 8).contiguous()
    for op in ("hue", "saturation"):  # rotate / scale the chroma: the channel mean (luma) and grey pixels stay
        aug = AdaptiveAugment(p=1.0, ops=op, seed=0)
        assert torch.allclose(aug(x).mean(1), x.mean(1), atol=1e-5) and torch.allclose(aug(grey), grey, atol=1e-5)
    flipped = AdaptiveAugment(p=1.0, ops="lumaflip", seed=0)(grey)  # luma flip: a grey image is negated or kept
    assert all(torch.allclose(f, g, atol=1e-5) or torch.allclose(f, -g, atol=1e-5) for f, g in zip(flipped, grey))
    assert any(torch.allclose(f, -g, atol=1e-5) for f, g in zip(flipped, grey))


def test_ada_applies_each_op_with_probability_p():
    x = images(2000, 1, side=4)
    changed = (AdaptiveAugment(p=0.3, ops="brightness", seed=0)(x) != x).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 0.3) < 0.04


@pytest.mark.parametrize("make", [lambda: DiffAugment(seed=5), lambda: AdaptiveAugment(p=0.7, seed=5)])
def test_gradients_reach_g_through_the_augmentation(make):
    torch.manual_seed(0)
    g, d, aug = ImgG(shape=(3, 8, 8)), ImgD(shape=(3, 8, 8)), make()
    d(aug(g(torch.randn(16, 4)))).mean().backward()
    grads = [p.grad for p in g.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


@pytest.mark.parametrize("make", [lambda s: DiffAugment(seed=s), lambda s: AdaptiveAugment(p=0.5, seed=s)])
def test_deterministic_under_a_seed(make):
    x = images(16, 3)
    a, b, c = make(1), make(1), make(2)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), b(x))  # and the streams stay in step
    assert not torch.equal(make(1)(x), c(x))
    # Without a seed: the global stream (GANModule's per-rank streams), reproducible with torch.manual_seed.
    unseeded = make(None)
    torch.manual_seed(9)
    first = unseeded(x)
    torch.manual_seed(9)
    assert torch.equal(first, unseeded(x))


def test_seeded_generator_state_is_in_the_state_dict():
    a = DiffAugment(seed=3)
    a(images())
    b = DiffAugment(seed=4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(images()), b(images()))


def test_bad_ada_arguments_raise_one_clear_line():
    for kwargs, match in [({"p": 1.5}, "p must be"), ({"target": 2.0}, "target must be"), ({"interval": 0}, "interval"),
                          ({"speed_kimg": 0}, "speed_kimg"), ({"ops": "bgx"}, "unknown op")]:
        with pytest.raises(ValueError, match=match):
            AdaptiveAugment(**kwargs)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AdaptiveAugment(p=1.0, ops="c")(torch.zeros(2, 2, 4, 4))


# ---------------------------------------------------------------- p's adaptation
def test_p_moves_up_by_the_paper_step_when_rt_is_above_target_and_down_otherwise():
    ada = AdaptiveAugment(target=0.6, interval=4, speed_kimg=1.0)  # p moves 1 per 1,000 images
    for _ in range(3):
        ada.observe(torch.ones(10, 1))
        assert float(ada.p) == 0.0  # only every `interval` D steps
    out = ada.observe(torch.ones(10, 1))
    assert float(ada.p) == pytest.approx(0.04) and float(ada.rt) == 1.0 and float(out["ada_p"]) == pytest.approx(0.04)
    for _ in range(4):  # r_t = 0.5 < 0.6: down by 4 x 8 images / 1,000
        ada.observe(torch.tensor([1.0] * 6 + [-1.0] * 2))
    assert float(ada.rt) == pytest.approx(0.5) and float(ada.p) == pytest.approx(0.04 - 0.032)
    for _ in range(40):
        ada.observe(-torch.ones(10))
    assert float(ada.p) == 0.0  # clamped at 0
    fixed = AdaptiveAugment(p=0.3, target=None, interval=1)
    fixed.observe(torch.ones(4))
    assert float(fixed.p) == pytest.approx(0.3) and float(fixed.rt) == 1.0


class ScriptedD(nn.Module):
    """A discriminator whose sign on every input is fixed: +1 (it 'recognizes' reals: overfitting) or -1."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.sign * (1.0 + x.flatten(1).abs().mean(1, keepdim=True)) + 0.0 * self.w


@pytest.mark.parametrize("sign, start, expect", [(1.0, 0.0, "up"), (-1.0, 0.5, "down")])
def test_p_follows_a_scripted_discriminator_in_training(sign, start, expect):
    ada = AdaptiveAugment(p=start, interval=2, speed_kimg=0.5)
    module = GANModule(ImgG(), ScriptedD(sign), augment=ada)
    quiet(max_steps=max_steps_for(8)).fit(module, image_loader())
    # 8 D steps of 16 images, an adjustment every 2: 4 moves of 32/500
    moved = 4 * 32 / 500
    assert float(ada.p) == pytest.approx(start + moved if expect == "up" else start - moved, abs=1e-6)
    assert float(module.last_step_metrics["rt"]) == sign
    assert float(module.last_step_metrics["ada_p"]) == pytest.approx(float(ada.p))


def test_rt_is_logged_without_augmentation_too():
    module = GANModule(ImgG(), ImgD())
    quiet(max_steps=max_steps_for(2)).fit(module, image_loader())
    rt = module.last_step_metrics["rt"]
    assert -1.0 <= float(rt) <= 1.0 and "ada_p" not in module.last_step_metrics


# ---------------------------------------------------------------- the module: every image D sees
class RecordingAugment(DiffAugment):
    def __init__(self) -> None:
        super().__init__("translation")
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled() and x.requires_grad))
        return super().forward(x)


def test_module_augments_reals_and_fakes_in_the_d_step_and_fakes_in_the_g_step():
    aug = RecordingAugment()
    module = GANModule(ImgG(), ImgD(), augment=aug)
    quiet(max_steps=max_steps_for(1)).fit(module, image_loader())
    # D step: real, fake (no graph needed); G step: fake, with G's graph
    assert aug.calls == [(16, False), (16, False), (16, True)]


def test_conditional_labels_pass_through():
    aug = AdaptiveAugment(p=0.8)
    module = GANModule(ImgG(), ImgD(num_classes=3), num_classes=3, augment=aug, regularizers={"r1": R1(1.0)})
    quiet(max_steps=max_steps_for(3)).fit(module, image_loader(labels=True))
    assert module.g_steps == 3 and all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("reg", ["r1", "r2", "wgan_gp", "lecam"])
@pytest.mark.parametrize("aug", ["diffaugment", "ada"])
def test_regularizers_with_augmentation_are_finite(reg, aug):
    regs = {"r1": R1(10.0), "r2": R2(10.0), "wgan_gp": WGANGP(10.0), "lecam": LeCam(0.1)}
    augment = DiffAugment() if aug == "diffaugment" else AdaptiveAugment(p=0.8)
    module = GANModule(ImgG(), ImgD(), regularizers={reg: regs[reg]}, augment=augment)
    quiet(max_steps=max_steps_for(4)).fit(module, image_loader())
    value = module.last_step_metrics[f"d_reg/{reg}"]
    assert torch.isfinite(value) and float(value) >= 0 or reg == "lecam"
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_r1_through_the_pipeline_double_backward_works_in_this_torch():
    """The alternative placement (StyleGAN2-ADA's: the penalty w.r.t. the clean reals, through the augmentation)
    needs a double backward through grid_sample; torch 2.14 does it (no custom gradient needed). The library takes
    it at D's inputs instead (see docs/augmentation.md); this test keeps the measurement honest."""
    d = ImgD(shape=(3, 8, 8))
    real = images(8, 3).requires_grad_()
    for aug in (AdaptiveAugment(p=1.0, seed=0), DiffAugment(seed=0)):
        logits = d(aug(real))
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum([1, 2, 3]).mean()
        d.zero_grad()
        penalty.backward()
        first = d.net[1].weight.grad  # (the last bias does not shape the input gradient: no grad there)
        assert torch.isfinite(penalty) and first is not None and torch.isfinite(first).all() and first.abs().sum() > 0


# ---------------------------------------------------------------- training state: checkpoint and resume
def test_checkpoint_round_trip_of_p_and_its_accumulators():
    ada = AdaptiveAugment(interval=3, speed_kimg=0.1)
    for _ in range(7):
        ada.observe(torch.ones(8))
    other = AdaptiveAugment(interval=3, speed_kimg=0.1)
    other.load_state_dict(ada.state_dict())
    for name in ("p", "rt", "accumulator", "observed"):
        assert torch.equal(getattr(other, name), getattr(ada, name)), name
    assert float(other.p) > 0 and int(other.observed) == 7
    ada.observe(torch.ones(8))
    other.observe(torch.ones(8))
    assert torch.equal(other.p, ada.p)


def _ada_fit(g_steps: int, ckpt_dir: Optional[Path] = None, ckpt_path: Optional[str] = None) -> GANModule:
    L.seed_everything(11, verbose=False)
    module = GANModule(ImgG(), ImgD(), regularizers={"r1": R1(1.0, every=2)}, ema_decay=0.9,
                       d_optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                       augment=AdaptiveAugment(p=0.3, interval=3, speed_kimg=0.2))
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, filename="{step}")] if ckpt_dir else []
    trainer = quiet(max_steps=max_steps_for(g_steps), callbacks=callbacks, enable_checkpointing=bool(callbacks))
    trainer.fit(module, image_loader(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module


def test_resume_mid_run_gives_the_same_p_and_the_same_weights(tmp_path):
    full = _ada_fit(10, ckpt_dir=tmp_path)
    ckpt = tmp_path / "step=10.ckpt"  # G step 5 of 10, mid-epoch (4 batches an epoch), mid ADA interval (3)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert {"augment.p", "augment.accumulator", "augment.observed"} <= set(saved)
    resumed = _ada_fit(10, ckpt_path=str(ckpt))
    assert float(full.augment.p) != pytest.approx(0.3)  # p moved, and augmentation was on
    a, b = full.state_dict(), resumed.state_dict()
    assert [k for k in a if isinstance(a[k], Tensor) and not torch.equal(a[k], b[k])] == []


# ---------------------------------------------------------------- DDP: p agreed over ranks
def _observe_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ada = AdaptiveAugment(interval=2, speed_kimg=100)
        gen = torch.Generator().manual_seed(rank)
        for step in range(12):  # alone, rank 0 (r_t ~ 1) would raise p and rank 1 (r_t ~ 0.45) lower it; together ~0.72
            ada.observe(torch.randn(64, generator=gen) + (3.0 if rank == 0 else 0.6))
        torch.save({k: v.clone() for k, v in ada.state_dict().items() if isinstance(v, Tensor)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_observe_all_reduces_the_sums_before_p_moves(monkeypatch):
    """Single-process view of the DDP path: the step's (sign sum, count) go through ``all_reduce`` (here: another
    rank's r_t = -1 added), and p moves on the reduced r_t, not this rank's."""
    import torch.distributed as dist

    def all_reduce(t: Tensor, *args: Any, **kwargs: Any) -> None:
        t += torch.tensor([-8.0, 8.0], dtype=t.dtype)  # the other rank: 8 images, all negative

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    ada = AdaptiveAugment(p=0.5, interval=1, speed_kimg=1.0)
    out = ada.observe(torch.ones(8))  # this rank alone: r_t = 1 > 0.6, p would go up
    assert float(out["rt"]) == 0.0 and float(ada.p) == pytest.approx(0.5 - 16 / 1000)


@pytest.mark.slow
def test_ddp_ranks_agree_on_p_after_all_reducing_rt(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_observe_worker, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # and equal to one process seeing both ranks' logits
    single = AdaptiveAugment(interval=2, speed_kimg=100)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    for _ in range(12):
        single.observe(torch.cat([torch.randn(64, generator=gens[0]) + 3.0, torch.randn(64, generator=gens[1]) + 0.6]))
    assert torch.allclose(single.p, states[0]["p"]) and float(single.p) == pytest.approx(6 * 256 / 100_000)


def _ddp_scenario(out: Path) -> None:
    """Run under Lightning's DDP launcher (2 gloo ranks): 50 G steps with ADA + R1; every rank saves its state."""
    from lightning.pytorch.strategies import DDPStrategy

    L.seed_everything(0, verbose=False)
    module = GANModule(ImgG(), ImgD(), regularizers={"r1": R1(1.0)}, augment=AdaptiveAugment(p=0.3, interval=2, speed_kimg=5))
    trainer = quiet(devices=2, strategy=DDPStrategy(process_group_backend="gloo"), max_steps=max_steps_for(50))
    trainer.fit(module, image_loader(n=128, batch_size=8))
    torch.save({"state": {k: v.clone() for k, v in module.state_dict().items()}, "g_steps": module.g_steps},
               out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_p_identical_and_replicas_bit_identical_after_50_g_steps(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, str(tmp_path)], check=True, env=env, cwd=tmp_path, timeout=600,
                   capture_output=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["g_steps"] == ranks[1]["g_steps"] == 50
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert 0 < float(a["augment.p"]) != pytest.approx(0.3)  # p moved (on the reduced r_t), augmentation stayed on


# ---------------------------------------------------------------- configs and data.limit
def _compose(tmp_path: Path, *overrides: str):
    from lightning_regan.config import compose_config

    return compose_config([*overrides, f"output_dir={tmp_path}"])


def _presets() -> list[Optional[str]]:
    from lightning_regan.config import config_dir

    return [None, *sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))]


@pytest.mark.parametrize("augment, cls", [("none", None), ("diffaugment", DiffAugment), ("ada", AdaptiveAugment)])
@pytest.mark.parametrize("preset", _presets())
def test_augment_choice_composes_with_every_preset(tmp_path, preset, augment, cls):
    from lightning_regan.builders import build_models, build_module, drop_unselected
    from lightning_regan.cli.train import validate_config

    cfg = _compose(tmp_path, *([f"experiment={preset}"] if preset else []), f"augment={augment}")
    drop_unselected(cfg)
    validate_config(cfg)
    assert (cfg.module.augment is None) == (cls is None)
    shape = (2,) if "Gaussian" in cfg.data._target_ else (1, 28, 28) if "MNIST" in cfg.data._target_ else (1, 8, 8)
    num_classes = 10 if cfg.model.get("conditional") else None
    module = build_module(cfg, *build_models(cfg, shape, num_classes), num_classes=num_classes)
    assert (module.augment is None) if cls is None else isinstance(module.augment, cls)


def test_ada_run_from_the_config_logs_p_and_rt_into_summary_and_plots(tmp_path):
    from lightning_regan.cli.train import train

    cfg = _compose(tmp_path, "augment=ada", "module.augment.p=0.2", "module.augment.speed_kimg=0.1", "max_g_steps=12",
                   "data.limit=128", "callbacks=[summary]", "+callbacks.summary.loss_log_every_n_g_steps=4",
                   "early_stopping=none", "logger=[]", "trainer.enable_progress_bar=false", "model.generator.channels=8", "model.discriminator.channels=8")
    summary, objects = train(cfg)
    assert len(objects["datamodule"].train_dataset()) == 128
    assert summary["status"] == "completed" and 0.0 <= summary["ada_p"] <= 1.0 and -1.0 <= summary["rt"] <= 1.0
    assert [row[0] for row in summary["augment_history"]] == [4, 8, 12]
    assert summary["plots"]["augment"] == "plots/augment.png" and (tmp_path / "plots" / "augment.png").is_file()


def test_data_limit_is_a_deterministic_subset_by_count_or_fraction():
    from lightning_regan.data import DigitsDataModule
    from lightning_regan.data.base import limit_indices

    assert limit_indices(10, 20) == list(range(10))
    a, b = limit_indices(1797, 600), limit_indices(1797, 600)
    assert a == b and len(set(a)) == 600 and a == sorted(a) and a != list(range(600))
    assert len(limit_indices(1797, 0.1)) == 180
    dm = DigitsDataModule(limit=100)
    dm.setup()
    labels = [int(dm.train_dataset()[i][1]) for i in range(100)]
    assert len(labels) == 100 and len(set(labels)) == 10  # a random subset keeps the classes
    for bad in (0, -5, 1.0, 1.5, "600", True):
        with pytest.raises(ValueError, match="limit must be"):
            DigitsDataModule(limit=bad)


def test_docs_quote_the_committed_step_cost_figures():
    """docs/augmentation.md's step-cost table is the benchmark's own table (bench/results/bench_augment.json)."""
    import json

    bench = json.loads((REPO_ROOT / "bench" / "results" / "bench_augment.json").read_text())
    docs = (REPO_ROOT / "docs" / "augmentation.md").read_text()
    quoted = docs.split("<!-- bench_augment -->", 1)[1].split("<!-- /bench_augment -->", 1)[0].strip()
    assert quoted == bench["markdown"].strip()
    assert bench["mode"] == "full" and {"step_ratio_diffaugment", "step_ratio_ada"} <= set(bench)


if __name__ == "__main__":  # the DDP scenario, launched by the slow test above
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _ddp_scenario(Path(sys.argv[1]))

"""Training-step benchmark: GANModule in a Lightning Trainer vs a hand-written PyTorch loop doing the same maths.

Measures, in one process with interleaved repeats (warm-up first, medians quoted):

* **framework overhead**: median step time of (a) ``lightning_regan.GANModule`` trained by ``lightning.Trainer``
  (progress bar, model summary, checkpointing and logger off, as one benchmarks) over (b) a hand-written loop with
  the same G, D, data loader, Adam(2e-4, (0.5, 0.999)) optimizers, loss and regularizer. Both start from the same
  weights and random state, so they compute the same updates: the script checks that their parameters agree
  after the first repeat (``same_maths``).
* **logger cost**: (a) with a ``CSVLogger`` (``log_every_n_steps=50``, as ``regan-train`` uses) over (a).
* **regularizer cost**: (a) with each regularizer over (a) without one.

One *step* is one training batch: one D update and one G update (``n_critic=1``). A step's time runs from the end
of one batch to the end of the next, so it includes data loading and every framework hook.

* **DDP, before and after** (``--ddp``; on in the quick and full modes): 2 gloo processes on the CPU train Lightning's
  tutorial GAN networks (MNIST size, batch 64 per rank) with a plain ``DDPStrategy``, interleaved with the way before
  (``find_unused_parameters=True``, DDP's reducer all-reducing both networks at every backward). Reports the median
  step time of each and the bytes all-reduced per G step (every ``torch.distributed.all_reduce`` inside a training
  step, DDP's reducer made visible by a communication hook in an untimed run).

Examples::

    python scripts/bench_step.py                 # full mode (a few minutes on a 2-core CPU)
    python scripts/bench_step.py --quick         # well under a minute
    python scripts/bench_step.py --device cuda   # on a GPU (auto-selected when available)
    python scripts/bench_step.py --ddp-only      # only DDP before/after (bench/results/bench_step_ddp.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

from lightning_regan import GANModule, max_steps_for  # noqa: E402
from lightning_regan.data import DigitsDataModule, GaussianMixtureDataModule  # noqa: E402
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator  # noqa: E402
from lightning_regan.regularizers import R1, WGANGP, Regularizer, WeightL2  # noqa: E402

LR, BETAS = 2e-4, (0.5, 0.999)
LATENT_DIM = 64  # conf/model/{dcgan,mlp}.yaml

#: Regularizers as configured in conf/regularizer/*.yaml (R1 every 16: StyleGAN2's lazy R1).
REGULARIZERS: dict[str, Callable[[], Optional[Regularizer]]] = {
    "none": lambda: None,
    "l2": lambda: WeightL2(1e-4),
    "r1_lazy16": lambda: R1(1.0, every=16),
    "r1": lambda: R1(1.0),
    "wgan_gp": lambda: WGANGP(10.0),
}
#: Upper bounds of the issue on (regularizer step time) / (no-regularizer step time), through GANModule.
REG_TARGETS = {"l2": 1.05, "r1_lazy16": 1.10, "r1": 2.0, "wgan_gp": 2.0}
FRAMEWORK_TARGET = 1.05


@dataclass
class Setup:
    """A benchmark case: models and data as the named Hydra configs build them."""

    name: str
    description: str
    make_models: Callable[[], tuple[nn.Module, nn.Module]]
    make_data: Callable[[int], L.LightningDataModule]
    batch_size: int


def _dcgan_models() -> tuple[nn.Module, nn.Module]:
    shape = (1, 8, 8)
    return DCGANGenerator(LATENT_DIM, shape), DCGANDiscriminator(shape)


def _mlp_models() -> tuple[nn.Module, nn.Module]:
    return MLPGenerator(LATENT_DIM, (2,)), MLPDiscriminator((2,))


SETUPS = {
    "dcgan_digits": Setup(
        "dcgan_digits", "model=dcgan data=digits: DCGAN G/D (64 ch), 8x8 sklearn digits, batch 64",
        _dcgan_models, lambda b: DigitsDataModule(batch_size=b), 64,
    ),
    "mlp_ring": Setup(
        "mlp_ring", "model=mlp data=gaussians: MLP G/D (256x2), 8-mode Gaussian ring, batch 256",
        _mlp_models, lambda b: GaussianMixtureDataModule(kind="ring", batch_size=b), 256,
    ),
}

#: Per mode: timed steps per run and setup (after ``warmup_steps`` untimed ones), interleaved repeats, the
#: regularizers timed through GANModule, those also timed in the hand loop (framework ratio), and which of the
#: extra variants (see :data:`KINDS`) run.
MODES: dict[str, dict[str, Any]] = {
    "smoke": {"steps": {"dcgan_digits": 3, "mlp_ring": 3}, "warmup_steps": 1, "repeats": 1,
              "regs": ["none", "r1"], "framework_regs": ["none", "r1"],
              "lightning_csv": True, "minimal": True, "selflog": True},
    "quick": {"steps": {"dcgan_digits": 3, "mlp_ring": 20}, "warmup_steps": 2, "repeats": 3,
              "regs": ["none", "l2", "r1_lazy16", "r1", "wgan_gp"], "framework_regs": ["none"],
              "lightning_csv": True, "minimal": False, "selflog": False},
    # Many short interleaved runs: on a shared machine the load changes over seconds, so short paired runs
    # compare like with like (10 repeats of 30 steps gave an interquartile range of +-4% on the MLP ratio).
    "full": {"steps": {"dcgan_digits": 5, "mlp_ring": 30}, "warmup_steps": 2, "repeats": 9,
             "regs": ["none", "l2", "r1_lazy16", "r1", "wgan_gp"], "framework_regs": ["none", "r1"],
             "lightning_csv": True, "minimal": True, "selflog": True},
}


# ---------------------------------------------------------------------------------------------- (a) Lightning
class StepClock(Callback):
    """Time stamps at the end of every training batch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.stamps.append(common.stamp(self.device))


class SelfLogGANModule(GANModule):
    """GANModule publishing its step metrics with ``self.log_dict`` as before the logging fix (the "before" of the
    before/after comparison)."""

    def _publish_train_metrics(self, metrics: Any) -> None:
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=self.latent_dim, prog_bar=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass


class MinimalGAN(L.LightningModule):
    """The same GAN step written the canonical Lightning way (manual optimization, no metrics, no regularizer): the
    cost of Lightning's own loop, apart from GANModule's."""

    def __init__(self, G: nn.Module, D: nn.Module) -> None:
        super().__init__()
        self.G, self.D = G, D
        self.automatic_optimization = False

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.G.parameters(), lr=LR, betas=BETAS), torch.optim.Adam(self.D.parameters(), lr=LR, betas=BETAS)]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, softplus = batch[0], nn.functional.softplus
        g_opt, d_opt = self.optimizers()
        with torch.no_grad():
            fake = self.G(torch.randn(real.shape[0], LATENT_DIM, device=self.device))
        d_loss = softplus(-self.D(real)).mean() + softplus(self.D(fake)).mean()
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        self.D.requires_grad_(False)
        g_loss = softplus(-self.D(self.G(torch.randn(real.shape[0], LATENT_DIM, device=self.device)))).mean()
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_opt.step()
        self.D.requires_grad_(True)


def run_lightning(module: L.LightningModule, data: L.LightningDataModule, steps: int, device: torch.device,
                  log_dir: Optional[str]) -> list[tuple[float, float]]:
    """Train ``steps`` batches of ``module`` in a Trainer set up as one benchmarks; returns the end-of-batch stamps."""
    clock = StepClock(device)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=max_steps_for(steps), max_epochs=-1,
        logger=CSVLogger(log_dir, name="bench") if log_dir else False, log_every_n_steps=50,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    return clock.stamps


# ---------------------------------------------------------------------------------------------- (b) by hand
def _penalty(name: str, D: nn.Module, real: Tensor, fake: Tensor, d_real: Tensor) -> Tensor:
    """The regularizer's maths written out (as in lightning_regan.regularizers)."""
    if name == "l2":
        return torch.stack([p.square().sum() for p in D.parameters() if p.ndim >= 2]).sum()
    if name.startswith("r1"):
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        return 0.5 * grad.reshape(grad.shape[0], -1).square().sum(1).mean()
    if name == "wgan_gp":
        eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device)
        x_hat = (eps * real.detach() + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        return (grad.reshape(grad.shape[0], -1).square().sum(1).add(1e-12).sqrt() - 1.0).square().mean()
    raise ValueError(name)


def run_hand(G: nn.Module, D: nn.Module, reg_name: str, reg: Optional[Regularizer], data: L.LightningDataModule,
             steps: int, device: torch.device) -> list[tuple[float, float]]:
    """The same training written as a plain PyTorch loop; returns the end-of-batch time stamps."""
    G, D = G.to(device), D.to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=LR, betas=BETAS)
    d_opt = torch.optim.Adam(D.parameters(), lr=LR, betas=BETAS)
    softplus = nn.functional.softplus
    weight = 0.0 if reg is None else reg.weight * reg.every
    every = 1 if reg is None else reg.every
    needs_real_grad = reg_name.startswith("r1")
    data.setup("fit")
    loader = data.train_dataloader()
    stamps: list[tuple[float, float]] = []
    d_step = 0
    while len(stamps) < steps:
        for real, _ in loader:
            real = real.to(device)
            due = reg is not None and d_step % every == 0
            # D step
            with torch.no_grad():
                fake = G(torch.randn(real.shape[0], LATENT_DIM, device=device))
            real.requires_grad_(due and needs_real_grad)
            d_real, d_fake = D(real), D(fake)
            d_loss = softplus(-d_real).mean() + softplus(d_fake).mean()
            if due:
                d_loss = d_loss + weight * _penalty(reg_name, D, real, fake, d_real)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            d_step += 1
            # G step, D frozen
            D.requires_grad_(False)
            g_loss = softplus(-D(G(torch.randn(real.shape[0], LATENT_DIM, device=device)))).mean()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            D.requires_grad_(True)
            stamps.append(common.stamp(device))
            if len(stamps) >= steps:
                break
    return stamps


# ---------------------------------------------------------------------------------------------- harness
def step_time(stamps: list[tuple[float, float]], warmup_steps: int, clock: int) -> float:
    """Median seconds per step after the warm-up steps, by wall clock (``clock=0``) or process CPU time (``1``).

    The median of the per-step durations ignores the rare step that a preemption or an epoch change lengthens.
    """
    timed = [s[clock] for s in stamps[max(warmup_steps - 1, 0):]]
    return common.median([b - a for a, b in zip(timed[:-1], timed[1:])])


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()) if p.is_floating_point())


class Bench:
    """Runs the variants of one setup from one set of initial weights and random state."""

    def __init__(self, setup: Setup, device: torch.device, tmp: str) -> None:
        self.setup = setup
        self.device = device
        self.tmp = tmp
        torch.manual_seed(0)
        self.G, self.D = setup.make_models()
        self.data = setup.make_data(setup.batch_size)
        self.data.setup("fit")

    def run(self, variant: str, steps: int) -> tuple[list[tuple[float, float]], nn.Module, nn.Module]:
        """Train ``steps`` batches of ``variant`` (``<kind>:<regularizer>``, kinds in :data:`KINDS`)."""
        kind, reg_name = variant.split(":")
        G, D = copy.deepcopy(self.G), copy.deepcopy(self.D)
        reg = REGULARIZERS[reg_name]()
        torch.manual_seed(1)  # same data order and noise for every variant
        if kind == "hand":
            return run_hand(G, D, reg_name, reg, self.data, steps, self.device), G, D
        if kind == "minimal":
            assert reg is None, "the minimal LightningModule has no regularizer"
            return run_lightning(MinimalGAN(G, D), self.data, steps, self.device, None), G, D
        module_cls = SelfLogGANModule if kind == "selflog" else GANModule
        module = module_cls(G, D, loss="non_saturating", regularizers={} if reg is None else {"reg": reg})
        log_dir = tempfile.mkdtemp(dir=self.tmp) if kind == "lightning_csv" else None
        return run_lightning(module, self.data, steps, self.device, log_dir), G, D


#: (a) GANModule; (b) hand loop; GANModule with a CSVLogger; the canonical minimal LightningModule; GANModule
#: logging through self.log_dict (before the fix).
KINDS = ("lightning", "hand", "lightning_csv", "minimal", "selflog")


def variants_for(cfg: dict[str, Any]) -> list[str]:
    out = [f"lightning:{reg}" for reg in cfg["regs"]] + [f"hand:{reg}" for reg in cfg["framework_regs"]]
    out += [f"{kind}:none" for kind in ("lightning_csv", "minimal", "selflog") if cfg[kind]]
    return out


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """Median (min, max) over repeats of the ratio of two variants timed in the same repeat, the ratio of their
    medians, and the ratio of their best (fastest) repeats: other processes only ever add time, so best-of-N is the
    least disturbed estimate on a shared machine (as ``timeit`` advises)."""
    ratios = [a / b for a, b in zip(times[num], times[den])]
    return {"median": common.median(ratios), "min": min(ratios), "max": max(ratios),
            "ratio_of_medians": common.median(times[num]) / common.median(times[den]),
            "best": min(times[num]) / min(times[den])}


CLOCKS = {"wall": 0, "cpu": 1}


def benchmark(setups: list[str], cfg: dict[str, Any], device: torch.device, verbose: bool = True) -> dict[str, Any]:
    """Run every variant of every setup ``cfg["repeats"]`` times, interleaved, and summarize by ``cfg["clock"]``."""
    framework_regs, warmup = cfg["framework_regs"], cfg["warmup_steps"]
    variants = variants_for(cfg)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        benches = {name: Bench(SETUPS[name], device, tmp) for name in setups}
        # times[clock][setup][variant] = per-repeat mean step times
        times = {c: {name: {v: [] for v in variants} for name in setups} for c in CLOCKS}
        same_maths: dict[str, dict[str, float]] = {name: {} for name in setups}
        # Warm-up round (imports, allocator, first Trainer of each kind), then repeats in a rotating order.
        for bench in benches.values():
            for v in dict.fromkeys(v.split(":")[0] + ":none" for v in variants):
                bench.run(v, warmup + 1)
        for r in range(cfg["repeats"]):
            for name, bench in benches.items():
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                models: dict[str, tuple[nn.Module, nn.Module]] = {}
                for v in order:
                    stamps, G, D = bench.run(v, warmup + cfg["steps"][name])
                    for clock, index in CLOCKS.items():
                        times[clock][name][v].append(step_time(stamps, warmup, index))
                    if r == 0 and (v.startswith("hand:") or v.split(":")[1] in framework_regs):
                        models[v] = (G.cpu(), D.cpu())
                if r == 0:  # (a) and (b) started from the same weights and random state: same updates?
                    for reg in framework_regs:
                        (ga, da), (gb, db) = models[f"lightning:{reg}"], models[f"hand:{reg}"]
                        same_maths[name][reg] = max(max_param_diff(ga, gb), max_param_diff(da, db))
            if verbose:
                print(f"  repeat {r + 1}/{cfg['repeats']} done", file=sys.stderr, flush=True)
        for name in setups:
            results[name] = summarize(name, times[cfg["clock"]][name], same_maths[name], cfg)
            results[name]["step_time_s"] = {
                c: {v: {**common.spread(vals), "values": vals} for v, vals in times[c][name].items()} for c in CLOCKS
            }
    return results


def summarize(name: str, t: dict[str, list[float]], same_maths: dict[str, float], cfg: dict[str, Any]) -> dict[str, Any]:
    framework = []
    for reg in cfg["framework_regs"]:
        pr = paired_ratios(t, f"lightning:{reg}", f"hand:{reg}")
        framework.append({
            "regularizer": reg,
            "lightning_ms": 1e3 * common.median(t[f"lightning:{reg}"]),
            "hand_ms": 1e3 * common.median(t[f"hand:{reg}"]),
            "overhead_ms": 1e3 * (common.median(t[f"lightning:{reg}"]) - common.median(t[f"hand:{reg}"])),
            "ratio": pr["median"], "ratio_min": pr["min"], "ratio_max": pr["max"],
            "ratio_of_medians": pr["ratio_of_medians"], "ratio_best": pr["best"],
            "target": FRAMEWORK_TARGET, "ok": pr["median"] <= FRAMEWORK_TARGET,
            "max_param_diff": same_maths[reg],
        })
    regularizers = []
    for reg in cfg["regs"]:
        if reg == "none":
            continue
        pr = paired_ratios(t, f"lightning:{reg}", "lightning:none")
        entry = {"regularizer": reg, "lightning_ms": 1e3 * common.median(t[f"lightning:{reg}"]),
                 "ratio": pr["median"], "ratio_min": pr["min"], "ratio_max": pr["max"], "ratio_best": pr["best"],
                 "target": REG_TARGETS.get(reg), "ok": None if reg not in REG_TARGETS else pr["median"] <= REG_TARGETS[reg]}
        if f"hand:{reg}" in t:
            entry["hand_ratio"] = paired_ratios(t, f"hand:{reg}", "hand:none")["median"]
        regularizers.append(entry)
    out: dict[str, Any] = {
        "description": SETUPS[name].description,
        "batch_size": SETUPS[name].batch_size,
        "timed_steps_per_run": cfg["steps"][name],
        "framework": framework,
        "regularizers": regularizers,
    }
    if "minimal:none" in t and "hand:none" in t:
        minimal_hand, gan_minimal = paired_ratios(t, "minimal:none", "hand:none"), paired_ratios(t, "lightning:none", "minimal:none")
        out["breakdown"] = {
            "minimal_lightning_ms": 1e3 * common.median(t["minimal:none"]),
            "lightning_over_hand": minimal_hand["median"], "lightning_over_hand_best": minimal_hand["best"],
            "ganmodule_over_minimal": gan_minimal["median"], "ganmodule_over_minimal_best": gan_minimal["best"],
        }
    if "selflog:none" in t and "hand:none" in t:
        over_hand, over_fixed = paired_ratios(t, "selflog:none", "hand:none"), paired_ratios(t, "selflog:none", "lightning:none")
        out["before_fix"] = {
            "what": "GANModule logging its step metrics with self.log_dict (before the fix)",
            "selflog_ms": 1e3 * common.median(t["selflog:none"]),
            "ratio_over_hand": over_hand["median"], "ratio_over_hand_best": over_hand["best"],
            "ratio_over_fixed": over_fixed["median"], "ratio_over_fixed_best": over_fixed["best"],
        }
    if "lightning_csv:none" in t:
        pr = paired_ratios(t, "lightning_csv:none", "lightning:none")
        out["logger"] = {"logger": "CSVLogger, log_every_n_steps=50", "ratio": pr["median"],
                         "ratio_min": pr["min"], "ratio_max": pr["max"], "ratio_best": pr["best"]}
    return out


def format_tables(results: dict[str, Any], clock: str) -> str:
    """The results as Markdown tables."""
    rows = []
    for name, e in results.items():
        for f in e["framework"]:
            rows.append([name, f["regularizer"], f"{f['lightning_ms']:.2f}", f"{f['hand_ms']:.2f}", f"{f['ratio']:.3f}",
                         f"{f['ratio_min']:.2f}-{f['ratio_max']:.2f}", f"{f['ratio_best']:.3f}", f"<= {f['target']}",
                         common.verdict(f["ratio"], f["target"]), f"{f['max_param_diff']:.1e}"])
    text = f"Framework overhead: GANModule in a Trainer (a) vs hand-written loop (b), median step time ({clock} clock)\n"
    text += common.markdown_table(
        ["setup", "regularizer", "(a) ms", "(b) ms", "(a)/(b) median", "range", "best-of-N", "target", "",
         "max |param (a) - (b)|"], rows)
    rows = []
    for name, e in results.items():
        for r in e["regularizers"]:
            target = "-" if r["target"] is None else f"<= {r['target']}"
            ok = "-" if r["ok"] is None else ("ok" if r["ok"] else "MISSED")
            hand = f"{r['hand_ratio']:.3f}" if "hand_ratio" in r else "-"
            rows.append([name, r["regularizer"], f"{r['lightning_ms']:.2f}", f"{r['ratio']:.3f}",
                         f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}", f"{r['ratio_best']:.3f}", target, ok, hand])
    if rows:
        text += "\n\nRegularizer cost through GANModule: step time with it / without any\n"
        text += common.markdown_table(
            ["setup", "regularizer", "step ms", "ratio median", "range", "best-of-N", "target", "", "hand loop ratio"], rows)
    rows = []
    for name, e in results.items():
        if "breakdown" in e:
            b = e["breakdown"]
            rows.append([name, "minimal LightningModule / hand loop", f"{b['lightning_over_hand']:.3f}",
                         f"{b['lightning_over_hand_best']:.3f}"])
            rows.append([name, "GANModule / minimal LightningModule", f"{b['ganmodule_over_minimal']:.3f}",
                         f"{b['ganmodule_over_minimal_best']:.3f}"])
        if "before_fix" in e:
            b = e["before_fix"]
            rows.append([name, "GANModule with self.log_dict (before the fix) / hand loop", f"{b['ratio_over_hand']:.3f}",
                         f"{b['ratio_over_hand_best']:.3f}"])
            rows.append([name, "GANModule with self.log_dict / GANModule now", f"{b['ratio_over_fixed']:.3f}",
                         f"{b['ratio_over_fixed_best']:.3f}"])
    if rows:
        text += "\n\nWhere the overhead is (no regularizer)\n"
        text += common.markdown_table(["setup", "comparison", "ratio median", "best-of-N"], rows)
    rows = [[name, f"{e['logger']['ratio']:.3f}", f"{e['logger']['ratio_min']:.2f}-{e['logger']['ratio_max']:.2f}",
             f"{e['logger']['ratio_best']:.3f}"] for name, e in results.items() if "logger" in e]
    if rows:
        text += "\n\nLogger cost: GANModule with a CSVLogger (log_every_n_steps=50) / without a logger\n"
        text += common.markdown_table(["setup", "ratio median", "range", "best-of-N"], rows)
    return text


def profile(setup: str, variant: str, steps: int, device: torch.device) -> None:
    """cProfile of one variant (after a short warm-up run): the top functions by cumulative and own time."""
    import cProfile
    import pstats

    kind = variant.split(":")[0]
    if kind not in KINDS or variant.split(":")[-1] not in REGULARIZERS:
        raise SystemExit(f"--profile: variant must be <kind>:<regularizer> with kind in {KINDS}, got {variant!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(SETUPS[setup], device, tmp)
        bench.run(variant, 5)
        profiler = cProfile.Profile()
        profiler.enable()
        stamps, _, _ = bench.run(variant, steps)
        profiler.disable()
    print(f"{setup} {variant}: {1e3 * step_time(stamps, 5, 1):.2f} ms per step (CPU time, under the profiler)")
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(15)


# ---------------------------------------------------------------------------------------------- DDP before / after
#: Per mode: timed steps per run (after ``warmup_steps``) and interleaved repeats of the DDP comparison.
DDP_MODES: dict[str, dict[str, int]] = {
    "smoke": {"steps": 3, "warmup_steps": 1, "repeats": 1},
    "quick": {"steps": 10, "warmup_steps": 2, "repeats": 3},
    "full": {"steps": 30, "warmup_steps": 2, "repeats": 7},
}
DDP_WORLD = 2
DDP_BATCH = 64  # per rank
TUTORIAL_LATENT = 100
DDP_VARIANTS = ("before", "after")


class TutorialGenerator(nn.Module):
    """Generator of Lightning's basic GAN tutorial: MLP blocks (BatchNorm, LeakyReLU) to a 1x28x28 Tanh image."""

    def __init__(self, latent_dim: int = TUTORIAL_LATENT, img_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        self.img_shape = img_shape

        def block(in_feat: int, out_feat: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(latent_dim, 128, normalize=False), *block(128, 256), *block(256, 512),
                                   *block(512, 1024), nn.Linear(1024, math.prod(img_shape)), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z).view(z.size(0), *self.img_shape)


class TutorialDiscriminator(nn.Module):
    """Discriminator of the tutorial, returning logits (its final Sigmoid is what the logit loss replaces)."""

    def __init__(self, img_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(math.prod(img_shape), 512), nn.LeakyReLU(0.2, inplace=True),
                                   nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1))

    def forward(self, img: Tensor) -> Tensor:
        return self.model(img.flatten(1))


class AllReduceBytes(Callback):
    """Counts the bytes of every ``torch.distributed.all_reduce`` issued inside training steps; optionally routes DDP's
    reducer through its default all-reduce communication hook, which calls that function, so it is counted too."""

    def __init__(self, expose_reducer: bool) -> None:
        self.expose_reducer = expose_reducer
        self.bytes = 0
        self._original: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.expose_reducer:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            trainer.strategy.model.register_comm_hook(None, default_hooks.allreduce_hook)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        import torch.distributed as dist

        self._original = original = dist.all_reduce

        def counting(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size()
            return original(tensor, *args, **kwargs)

        dist.all_reduce = counting

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        import torch.distributed as dist

        dist.all_reduce = self._original


def _digits_28px() -> torch.utils.data.TensorDataset:
    """scikit-learn's 1,797 8x8 digits resized to MNIST's 28x28, in [-1, 1] (real images, no download)."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    images = nn.functional.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
    return torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))


def _ddp_fit(variant: str, steps: int, data: Any, count_bytes: bool) -> tuple[list[tuple[float, float]], int, int]:
    """Train ``steps`` batches on this rank; returns the end-of-batch stamps, the bytes all-reduced and the G steps."""
    from lightning.pytorch.strategies import DDPStrategy

    torch.manual_seed(0)
    module = GANModule(TutorialGenerator(), TutorialDiscriminator(), loss="non_saturating", latent_dim=TUTORIAL_LATENT)
    clock = StepClock(torch.device("cpu"))
    callbacks: list[Callback] = [clock]
    counter = AllReduceBytes(expose_reducer=variant == "before") if count_bytes else None
    if counter is not None:
        callbacks.append(counter)
    before = {"find_unused_parameters": True} if variant == "before" else {}
    strategy = DDPStrategy(process_group_backend="gloo", **before)
    trainer = L.Trainer(
        accelerator="cpu", devices=DDP_WORLD, strategy=strategy, max_steps=max_steps_for(steps), max_epochs=-1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=callbacks,
    )
    loader = torch.utils.data.DataLoader(data, batch_size=DDP_BATCH, shuffle=True, drop_last=True)
    # The way before: GANModule's own reduction off (it finds no DDP wrapper), DDP's reducer does it.
    with mock.patch("lightning_regan.module.ddp_model", return_value=None) if variant == "before" else nullcontext():
        trainer.fit(module, loader)
    return clock.stamps, (counter.bytes if counter is not None else 0), module.g_steps


def ddp_worker(out_dir: str, cfg: dict[str, Any]) -> None:
    """One rank of the DDP comparison (started by :func:`benchmark_ddp` with torchrun-style variables)."""
    torch.set_num_threads(1)
    rank = int(os.environ["LOCAL_RANK"])
    data = _digits_28px()
    steps, warmup = cfg["steps"], cfg["warmup_steps"]
    with common.bench_session(torch.device("cpu"), 1):
        bytes_per_g_step = {}
        for v in DDP_VARIANTS:  # untimed: warm-up and byte count
            _, sent, g_steps = _ddp_fit(v, warmup + 2, data, count_bytes=True)
            bytes_per_g_step[v] = sent / g_steps
        times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in DDP_VARIANTS} for c in CLOCKS}
        for r in range(cfg["repeats"]):
            order = DDP_VARIANTS[r % 2:] + DDP_VARIANTS[:r % 2]
            for v in order:
                stamps, _, _ = _ddp_fit(v, warmup + steps, data, count_bytes=False)
                for clock, index in CLOCKS.items():
                    times[clock][v].append(step_time(stamps, warmup, index))
    G, D = TutorialGenerator(), TutorialDiscriminator()
    result = {"rank": rank, "times": times, "bytes_per_g_step": bytes_per_g_step,
              "g_params": sum(p.numel() for p in G.parameters()), "d_params": sum(p.numel() for p in D.parameters())}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def benchmark_ddp(cfg: dict[str, Any], clock: str, timeout: float = 1800) -> dict[str, Any]:
    """Run :func:`ddp_worker` on ``DDP_WORLD`` CPU processes started side by side and summarize rank 0's timings."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(_free_port()), WORLD_SIZE=str(DDP_WORLD), NODE_RANK="0")
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
        procs = []
        for rank in range(DDP_WORLD):
            log = open(Path(tmp, f"rank{rank}.log"), "w")
            procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--ddp-worker", tmp,
                                            json.dumps(cfg)], env=dict(env, LOCAL_RANK=str(rank)), stdout=log,
                                           stderr=subprocess.STDOUT), log))
        try:
            codes = [proc.wait(timeout=timeout) for proc, _ in procs]
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        if any(codes):
            tail = Path(tmp, "rank0.log").read_text()[-3000:]
            raise SystemExit(f"DDP benchmark workers failed (exit codes {codes}):\n{tail}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(DDP_WORLD)]
    r0 = ranks[0]
    g, d = r0["g_params"], r0["d_params"]
    t = r0["times"][clock]
    pr = paired_ratios(t, "after", "before")
    minimum = 4 * (g + d)  # n_critic = 1, fp32
    return {
        "description": "Lightning's tutorial GAN networks (MLP, 1x28x28, BatchNorm in G), 2 gloo processes on the CPU, "
                       "batch 64 per rank, n_critic=1, sklearn digits resized to 28x28",
        "world_size": DDP_WORLD, "batch_size_per_rank": DDP_BATCH, "timed_steps_per_run": cfg["steps"],
        "repeats": cfg["repeats"], "g_params": g, "d_params": d,
        "before": {"what": "DDPStrategy(find_unused_parameters=True): DDP's reducer at every backward",
                   "step_ms": 1e3 * common.median(t["before"]), "bytes_per_g_step": r0["bytes_per_g_step"]["before"]},
        "after": {"what": "plain DDPStrategy: GANModule all-reduces the stepping network once per optimizer step",
                  "step_ms": 1e3 * common.median(t["after"]), "bytes_per_g_step": r0["bytes_per_g_step"]["after"]},
        "min_bytes_per_g_step": minimum,
        "after_over_min_bytes": r0["bytes_per_g_step"]["after"] / minimum,
        "step_time_ratio_after_over_before": pr["median"], "ratio_min": pr["min"], "ratio_max": pr["max"],
        "ratio_best": pr["best"],
        "step_time_s": {c: {v: {**common.spread(vals), "values": vals} for v, vals in r0["times"][c].items()}
                        for c in CLOCKS},
        "rank1_step_ms": {v: 1e3 * common.median(ranks[1]["times"][clock][v]) for v in DDP_VARIANTS},
    }


def format_ddp_table(ddp: dict[str, Any], clock: str) -> str:
    t = ddp["step_time_s"]
    rows = [[v, ddp[v]["what"], f"{1e3 * t['wall'][v]['median']:.1f}", f"{1e3 * t['cpu'][v]['median']:.1f}",
             f"{ddp[v]['bytes_per_g_step']:,.0f}", f"{ddp[v]['bytes_per_g_step'] / ddp['min_bytes_per_g_step']:.3f}"]
            for v in DDP_VARIANTS]
    text = (f"DDP step time and traffic, before and after ({ddp['description']}; median step time of rank 0 over "
            f"{ddp['repeats']} interleaved runs of {ddp['timed_steps_per_run']} steps; minimum 4 x (|G| + |D|) = "
            f"{ddp['min_bytes_per_g_step']:,} bytes per G step)\n")
    text += common.markdown_table(["variant", "what", "step ms (wall)", "step ms (cpu)", "bytes all-reduced per G step",
                                   "/ minimum"], rows)
    text += (f"\n\nafter / before step time ({clock} clock, paired by repeat): median "
             f"{ddp['step_time_ratio_after_over_before']:.3f} (range {ddp['ratio_min']:.2f}-{ddp['ratio_max']:.2f}, "
             f"best-of-N {ddp['ratio_best']:.3f})")
    return text


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs (well under a minute on a 2-core CPU)")
    mode.add_argument("--smoke", action="store_true", help="a couple of steps, 1 repeat: checks that the script works")
    p.add_argument("--repeats", type=int, help="interleaved repeats per variant (default: by mode)")
    p.add_argument("--steps", type=int, help="timed steps per run, every setup (default: by mode)")
    p.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    p.add_argument("--regs", nargs="+", choices=sorted(REGULARIZERS), help="regularizers timed through GANModule")
    p.add_argument("--framework-regs", nargs="+", choices=sorted(REGULARIZERS),
                   help="regularizers also timed in the hand loop (framework ratio)")
    p.add_argument("--no-logger", action="store_true", help="skip the CSVLogger variant")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the minimal-LightningModule and self.log_dict (before the fix) variants")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on the CPU (default 1: timings insensitive to other load; 0 = torch's default)")
    p.add_argument("--clock", choices=sorted(CLOCKS),
                   help="clock of the reported ratios: cpu (process CPU time; default on the CPU, robust to other "
                        "processes sharing the cores) or wall (default on a GPU); both are saved")
    p.add_argument("--out", help="JSON output (default bench/results/bench_step.json)")
    ddp = p.add_mutually_exclusive_group()
    ddp.add_argument("--ddp", dest="ddp", action="store_true", default=None,
                     help="also run the DDP before/after comparison (default in the quick and full modes)")
    ddp.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the DDP comparison")
    ddp.add_argument("--ddp-only", action="store_true",
                     help="only the DDP comparison (default output bench/results/bench_step_ddp.json)")
    p.add_argument("--ddp-worker", nargs=2, metavar=("DIR", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--profile", metavar="VARIANT",
                   help="instead of benchmarking, run VARIANT (e.g. lightning:none, selflog:none, hand:none) of the first "
                        "--setups entry under cProfile for --steps steps (default 200) and print the top functions")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker[0], json.loads(args.ddp_worker[1]))
        return {}
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = copy.deepcopy(MODES[mode])
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    if args.steps is not None:
        cfg["steps"] = {name: args.steps for name in SETUPS}
    for key in ("regs", "framework_regs"):
        if getattr(args, key) is not None:
            cfg[key] = list(getattr(args, key))
    cfg["regs"] = list(dict.fromkeys(["none", *cfg["regs"], *cfg["framework_regs"]]))
    cfg["lightning_csv"] = cfg["lightning_csv"] and not args.no_logger
    if args.no_breakdown:
        cfg["minimal"] = cfg["selflog"] = False
    if "none" not in cfg["framework_regs"]:  # the breakdown compares with the hand loop without regularizer
        cfg["minimal"] = cfg["selflog"] = False
    device = common.resolve_device(args.device)
    cfg["clock"] = args.clock or ("cpu" if device.type == "cpu" else "wall")
    if args.profile:
        with common.bench_session(device, args.threads):
            profile(args.setups[0], args.profile, args.steps or 200, device)
        return {}
    run_ddp = args.ddp_only or (args.ddp if args.ddp is not None else mode != "smoke")
    ddp_cfg = dict(DDP_MODES[mode])
    if args.repeats is not None:
        ddp_cfg["repeats"] = args.repeats
    if args.steps is not None:
        ddp_cfg["steps"] = args.steps
    start = time.perf_counter()
    with common.bench_session(device, args.threads):
        machine = common.machine_info(device)  # inside: records the threads used
        results = {} if args.ddp_only else benchmark(args.setups, cfg, device)
    ddp_results = benchmark_ddp(ddp_cfg, cfg["clock"]) if run_ddp else None
    payload = {
        "schema": common.SCHEMA_VERSION,
        "benchmark": "step",
        "mode": mode,
        "command": common.command_line(__file__, argv),
        "machine": machine,
        "config": {**cfg, "steps": {k: v for k, v in cfg["steps"].items() if k in args.setups},
                   "loss": "non_saturating", "optimizer": f"Adam(lr={LR}, betas={BETAS})", "n_critic": 1,
                   "latent_dim": LATENT_DIM},
        "wall_time_s": time.perf_counter() - start,
        "setups": results,
    }
    tables = [] if args.ddp_only else [format_tables(results, cfg["clock"])]
    if ddp_results is not None:
        payload["ddp"] = ddp_results
        tables.append(format_ddp_table(ddp_results, cfg["clock"]))
    payload["markdown"] = "\n\n".join(tables)
    path = common.write_json(payload, args.out, "bench_step_ddp.json" if args.ddp_only else "bench_step.json")
    print(payload["markdown"])
    print(f"\nwrote {path} ({payload['wall_time_s']:.0f} s)")
    if path.name in ("bench_step.json", "bench_step_ddp.json", "bench_fid.json"):
        common.write_results_readme(path.parent)
    return payload


if __name__ == "__main__":
    main()

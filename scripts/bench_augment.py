"""Step cost of augmenting D's inputs: a GANModule step with DiffAugment / ADA over the same step without.

DCGAN G and D (width ``--width``, 16 by default, as the studies' small DCGAN) on 28x28 one-channel images, batch 64,
non-saturating loss, no regularizer, one D and one G update per step (``n_critic=1``), trained through the same
benchmarking Trainer as ``scripts/bench_step.py`` (its ``run_lightning``). The three variants (``augment=none``,
``diffaugment`` with the default policy ``color,translation,cutout``, and ``ada`` with the ``bgc`` pipeline at a
fixed p = 0.5, so that every op runs on half of the images) start from the same weights and run in interleaved
repeats in one process; each repeat's ratio of median step times is reported (median over repeats, and best-of-N,
since other processes only ever add time). Process CPU time on a CPU (one thread), wall time on a GPU. Targets of
issue 21: DiffAugment <= 1.15x, ADA <= 1.35x. The images are random (the cost of a step does not depend on them).
Also measured: the cost of an R1 D update with the penalty at D's (augmented) inputs vs through the pipeline.

Examples::

    python scripts/bench_augment.py            # a few minutes on a 2-core CPU
    python scripts/bench_augment.py --smoke    # a few steps: checks that the script works
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402
from bench_step import LATENT_DIM, run_lightning, step_time  # noqa: E402

from lightning_regan import GANModule  # noqa: E402
from lightning_regan.augment import AdaptiveAugment, DiffAugment  # noqa: E402
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator  # noqa: E402

TARGETS = {"diffaugment": 1.15, "ada": 1.35}
SHAPE = (1, 28, 28)
BATCH = 64
ADA_P = 0.5
MODES = {"smoke": {"steps": 3, "warmup": 1, "repeats": 1}, "full": {"steps": 25, "warmup": 4, "repeats": 5}}
VARIANTS = ("none", "diffaugment", "ada")


class RandomImages(L.LightningDataModule):
    def __init__(self, n: int = 1024) -> None:
        super().__init__()
        self.x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=BATCH, shuffle=True, drop_last=True)


def make_augment(variant: str) -> Optional[torch.nn.Module]:
    if variant == "diffaugment":
        return DiffAugment()
    if variant == "ada":
        return AdaptiveAugment(p=ADA_P, target=None)
    return None


def run(variant: str, width: int, steps: int, device: torch.device) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    G = DCGANGenerator(LATENT_DIM, SHAPE, channels=width)
    D = DCGANDiscriminator(SHAPE, channels=width)
    module = GANModule(G, D, loss="non_saturating", augment=make_augment(variant))
    torch.manual_seed(1)
    return run_lightning(module, RandomImages(), steps, device, None)


def r1_placement(width: int, steps: int, warmup: int) -> dict[str, Any]:
    """CPU ms of one R1 D update (non-saturating loss + R1, ADA at p = 0.5) with the penalty taken where the library
    takes it (at D's inputs: the augmented reals, one backward through D twice) and where StyleGAN2-ADA takes it (the
    clean reals, through the augmentation: a double backward through ``grid_sample``); both must be finite."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    D = DCGANDiscriminator(SHAPE, channels=width)
    aug = AdaptiveAugment(p=ADA_P, target=None)
    opt = torch.optim.Adam(D.parameters())
    real = torch.rand(BATCH, *SHAPE) * 2 - 1
    out: dict[str, Any] = {}
    for where in ("d_input", "through_pipeline"):
        times, penalties = [], []
        for i in range(steps + warmup):
            t = time.process_time()
            x = real.detach().requires_grad_() if where == "through_pipeline" else aug(real).detach().requires_grad_()
            logits = D(aug(x) if where == "through_pipeline" else x)
            (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            penalty = grad.square().flatten(1).sum(1).mean()
            loss = F.softplus(-logits).mean() + 5.0 * penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.process_time() - t)
            penalties.append(float(penalty))
        out[where] = {"step_ms": 1e3 * common.median(times), "finite": all(map(lambda v: v == v and abs(v) < 1e30, penalties))}
    out["ratio_through_pipeline"] = out["through_pipeline"]["step_ms"] / out["d_input"]["step_ms"]
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = common.ab_parser(__doc__, "bench_augment.json")
    p.add_argument("--width", type=int, default=16, help="DCGAN channels at full resolution")
    args = p.parse_args(argv)
    mode, cfg = common.ab_config(MODES, args)
    device = common.resolve_device(args.device)
    clock = 1 if device.type == "cpu" else 0
    start = time.perf_counter()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with common.bench_session(device, 1):
        machine = common.machine_info(device)
        run("none", args.width, 2, device)  # warm-up (imports, allocator, first Trainer)
        for r in range(cfg["repeats"]):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                stamps = run(variant, args.width, cfg["steps"] + cfg["warmup"], device)
                times[variant].append(step_time(stamps, cfg["warmup"], clock))
        r1 = r1_placement(args.width, cfg["steps"], cfg["warmup"])
    results: dict[str, Any] = {"none": {"step_ms": 1e3 * common.median(times["none"])}}
    for variant in ("diffaugment", "ada"):
        ratios = [a / b for a, b in zip(times[variant], times["none"])]
        results[variant] = {"step_ms": 1e3 * common.median(times[variant]), "ratio_median": common.median(ratios),
                            "ratio_min": min(ratios), "ratio_max": max(ratios),
                            "ratio_best": min(times[variant]) / min(times["none"]), "target": TARGETS[variant]}
    rows = [["none", f"{results['none']['step_ms']:.1f}", "1", "", ""]]
    rows += [[v, f"{r['step_ms']:.1f}", f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})",
              f"{r['ratio_best']:.3f}", f"<= {r['target']}: {common.verdict(r['ratio_median'], r['target'])}"]
             for v, r in results.items() if v != "none"]
    markdown = common.markdown_table(["augment", "ms/step", "ratio median (min-max)", "ratio best", "target"], rows)
    payload = {
        "schema": common.SCHEMA_VERSION, "benchmark": "augment", "mode": mode,
        "command": common.command_line(__file__, argv), "machine": machine,
        "config": {**cfg, "clock": "cpu" if clock else "wall", "model": f"DCGAN width {args.width}",
                   "shape": list(SHAPE), "batch": BATCH, "ada_p": ADA_P, "diffaugment_policy": "color,translation,cutout"},
        "wall_time_s": time.perf_counter() - start, "variants": results,
        "step_ratio_diffaugment": results["diffaugment"]["ratio_median"], "step_ratio_ada": results["ada"]["ratio_median"],
        "r1_placement": r1,
        "markdown": markdown,
    }
    path = common.write_json(payload, args.out, "bench_augment.json")
    print(markdown)
    print(f"R1 D step: at D's inputs {r1['d_input']['step_ms']:.1f} ms, through the pipeline "
          f"{r1['through_pipeline']['step_ms']:.1f} ms (x{r1['ratio_through_pipeline']:.2f})")
    print(f"\nwrote {path} ({payload['wall_time_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()

"""Cost of class conditioning: a conditional GANModule step over the unconditional step of the same networks.

The same architecture (``model=dcgan`` on 8x8 digits, ``model=mlp`` on 8x8 digits) is built twice from the same
seed: unconditional, and with ``num_classes=10`` (label embedding joined to ``z`` in G, projection head in D;
``model.conditional=true``). Both train through ``GANModule`` in the same benchmarking Trainer as
``scripts/bench_step.py`` (its ``run_lightning``: one step = one D and one G update, ``n_critic=1``), in interleaved
repeats; the ratio of each repeat's median step times is reported (median over repeats, and best-of-N, since other
processes only ever add time). Process CPU time on a CPU, wall time on a GPU. Target of issue 12: <= 1.10.

Examples::

    python scripts/bench_conditional.py            # ~1-2 minutes on a 2-core CPU
    python scripts/bench_conditional.py --smoke    # a few steps: checks that the script works
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402
from bench_step import LATENT_DIM, run_lightning, step_time  # noqa: E402

from lightning_regan import GANModule  # noqa: E402
from lightning_regan.data import DigitsDataModule  # noqa: E402
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator  # noqa: E402

TARGET = 1.10
SHAPE = (1, 8, 8)
NUM_CLASSES = 10

#: name -> (description, factory(num_classes) -> (G, D), batch size)
SETUPS: dict[str, tuple[str, Callable[[Optional[int]], tuple[nn.Module, nn.Module]], int]] = {
    "dcgan_digits": ("model=dcgan data=digits: DCGAN G/D (64 ch), 8x8 digits, batch 64",
                     lambda k: (DCGANGenerator(LATENT_DIM, SHAPE, num_classes=k), DCGANDiscriminator(SHAPE, num_classes=k)), 64),
    "mlp_digits": ("model=mlp data=digits: MLP G/D (256x2), 8x8 digits, batch 64",
                   lambda k: (MLPGenerator(LATENT_DIM, SHAPE, num_classes=k), MLPDiscriminator(SHAPE, num_classes=k)), 64),
}
MODES = {"smoke": {"steps": 4, "warmup": 1, "repeats": 1}, "full": {"steps": 40, "warmup": 5, "repeats": 7}}


def run(setup: str, conditional: bool, steps: int, device: torch.device) -> list[tuple[float, float]]:
    _, make, batch = SETUPS[setup]
    torch.manual_seed(0)
    G, D = make(NUM_CLASSES if conditional else None)
    module = GANModule(G, D, loss="hinge", num_classes=NUM_CLASSES if conditional else None)
    data = DigitsDataModule(batch_size=batch)
    torch.manual_seed(1)
    return run_lightning(module, data, steps, device, None)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = common.ab_parser(__doc__, "bench_conditional.json")
    p.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    args = p.parse_args(argv)
    mode, cfg = common.ab_config(MODES, args)
    device = common.resolve_device(args.device)
    clock = 1 if device.type == "cpu" else 0
    start = time.perf_counter()
    results: dict[str, Any] = {}
    with common.bench_session(device, 1):
        machine = common.machine_info(device)
        for setup in args.setups:
            run(setup, False, 2, device)  # warm-up (imports, allocator, first Trainer)
            times: dict[str, list[float]] = {"unconditional": [], "conditional": []}
            for r in range(cfg["repeats"]):
                order = ("unconditional", "conditional") if r % 2 == 0 else ("conditional", "unconditional")
                for variant in order:
                    stamps = run(setup, variant == "conditional", cfg["steps"] + cfg["warmup"], device)
                    times[variant].append(step_time(stamps, cfg["warmup"], clock))
            ratios = [c / u for c, u in zip(times["conditional"], times["unconditional"])]
            results[setup] = {
                "description": SETUPS[setup][0],
                "unconditional_step_ms": 1e3 * common.median(times["unconditional"]),
                "conditional_step_ms": 1e3 * common.median(times["conditional"]),
                "ratio_median": common.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "ratio_best": min(times["conditional"]) / min(times["unconditional"]),
            }
    rows = [[name, r["description"], f"{r['unconditional_step_ms']:.2f}", f"{r['conditional_step_ms']:.2f}",
             f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})", f"{r['ratio_best']:.3f}",
             common.verdict(r["ratio_median"], TARGET)] for name, r in results.items()]
    markdown = common.markdown_table(
        ["setup", "networks", "unconditional ms/step", "conditional ms/step", "ratio median (min-max)", "ratio best",
         f"<= {TARGET}"], rows)
    payload = {"schema": common.SCHEMA_VERSION, "benchmark": "conditional", "mode": mode,
               "command": common.command_line(__file__, argv), "machine": machine,
               "config": {**cfg, "clock": "cpu" if clock else "wall", "loss": "hinge", "num_classes": NUM_CLASSES},
               "wall_time_s": time.perf_counter() - start, "setups": results, "markdown": markdown}
    path = common.write_json(payload, args.out, "bench_conditional.json")
    print(markdown)
    print(f"\nwrote {path} ({payload['wall_time_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()

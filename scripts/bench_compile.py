"""Compile benchmark: GANModule(compile=True) vs eager GANModule vs a hand-written loop, side by side in one process.

Same networks, data and optimizers as ``scripts/bench_step.py`` (DCGAN on 8x8 digits, MLP on the 8-mode ring), with
no regularizer, R1 every D step and lazy R1 (every 16 D steps). One compiled and one eager GANModule per setup are
trained in short interleaved runs (the regularizer swapped between runs); the hand loop is
``bench_step.run_hand`` (eager). Reported: the median over repeats of the paired ratio compiled / eager (same repeat),
each variant's median step time, and the compile time (first compiled run minus the same run eager), apart.

A run's step time is its mean over the timed steps (not the median step), so lazy R1's one step in 16 counts; runs
are 32 steps (two R1 steps each under lazy R1). On a shared CPU quote the ratios, not the absolute times.

Examples::

    nice -n 10 python scripts/bench_compile.py            # full mode (about 10 minutes on a loaded 2-core CPU)
    python scripts/bench_compile.py --device cuda          # on a GPU (scripts/device_check.sh runs this)
    python scripts/bench_compile.py --smoke --setups mlp_ring --regs none   # seconds: checks that the script works
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402
import bench_step  # noqa: E402

from lightning_regan import GANModule  # noqa: E402
from lightning_regan.data import DigitsDataModule  # noqa: E402
from lightning_regan.models import DCGANDiscriminator, DCGANGenerator  # noqa: E402
from lightning_regan.regularizers import regularizer_dict  # noqa: E402

REGS = ("none", "r1", "r1_lazy16")
#: bench_step's setups, and the DCGAN at MNIST size (digits resized to 28x28: no download), for GPUs.
SETUPS = {
    **bench_step.SETUPS,
    "dcgan_digits28": bench_step.Setup(
        "dcgan_digits28", "model=dcgan data=digits data.image_size=28: DCGAN G/D (64 ch) at MNIST size, batch 64",
        lambda: (DCGANGenerator(bench_step.LATENT_DIM, (1, 28, 28)), DCGANDiscriminator((1, 28, 28))),
        lambda b: DigitsDataModule(image_size=28, batch_size=b), 64,
    ),
}
DEFAULT_SETUPS = ["dcgan_digits", "mlp_ring"]
KINDS = ("eager", "compiled", "hand")
MODES: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 3, "warmup_steps": 1, "repeats": 1},
    "quick": {"steps": 16, "warmup_steps": 1, "repeats": 3},
    "full": {"steps": 32, "warmup_steps": 1, "repeats": 7},
}
#: Top-level keys of the JSON (the issue's names) -> (setup, regularizer).
HEADLINE = {
    "compiled_over_eager_dcgan": ("dcgan_digits", "none"),
    "compiled_over_eager_dcgan_r1": ("dcgan_digits", "r1"),
    "compiled_over_eager_dcgan_lazy_r1": ("dcgan_digits", "r1_lazy16"),
    "compiled_over_eager_mlp": ("mlp_ring", "none"),
}


def run_time(stamps: list[tuple[float, float]], warmup: int, clock: int) -> float:
    """Mean seconds per step after ``warmup`` steps (the stamps are taken at the end of each step)."""
    timed = [s[clock] for s in stamps[max(warmup - 1, 0):]]
    return (timed[-1] - timed[0]) / (len(timed) - 1)


class CompileBench:
    """One setup: an eager and a compiled GANModule from the same weights, and the hand loop's copies."""

    def __init__(self, setup: bench_step.Setup, device: torch.device, compile_options: dict[str, Any]) -> None:
        self.setup, self.device = setup, device
        torch.manual_seed(0)
        G, D = setup.make_models()
        self.data = setup.make_data(setup.batch_size)
        self.data.setup("fit")
        self.modules = {
            "eager": GANModule(copy.deepcopy(G), copy.deepcopy(D), loss="non_saturating"),
            "compiled": GANModule(copy.deepcopy(G), copy.deepcopy(D), loss="non_saturating", compile=compile_options),
        }
        self.hand = (copy.deepcopy(G), copy.deepcopy(D))

    def run(self, kind: str, reg_name: str, steps: int) -> list[tuple[float, float]]:
        """Train ``steps`` batches of ``kind`` with regularizer ``reg_name``; end-of-step time stamps."""
        reg = bench_step.REGULARIZERS[reg_name]()
        if kind == "hand":
            return bench_step.run_hand(*self.hand, reg_name, reg, self.data, steps, self.device)
        module = self.modules[kind]
        module.regularizers = regularizer_dict({} if reg is None else {"reg": reg})
        return bench_step.run_lightning(module, self.data, steps, self.device, None)


def benchmark(setups: list[str], regs: list[str], cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every (kind, regularizer) of every setup ``cfg["repeats"]`` times, interleaved; summarized by ``cfg["clock"]``."""
    warmup, steps = cfg["warmup_steps"], cfg["steps"]
    clocks = bench_step.CLOCKS
    results: dict[str, Any] = {}
    for name in setups:
        bench = CompileBench(SETUPS[name], device, cfg["compile"])
        # Warm-up: the compiled module's first run compiles every graph it needs (no regularizer, and R1 runs D
        # eagerly), timed against the same run eager.
        bench.run("eager", "none", warmup + 1)  # the first Trainer of the process pays for more than compiling
        bench.run("hand", "none", warmup + 1)
        graphs0 = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        first = {}
        for kind in ("compiled", "eager"):
            t0 = time.perf_counter()
            bench.run(kind, "none", warmup + steps)
            first[kind] = time.perf_counter() - t0
        compile_s = first["compiled"] - first["eager"]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs0
        variants = [(kind, reg) for reg in regs for kind in KINDS]
        times = {c: {f"{k}:{r}": [] for k, r in variants} for c in clocks}
        for rep in range(cfg["repeats"]):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for kind, reg in order:
                stamps = bench.run(kind, reg, warmup + steps)
                for clock, index in clocks.items():
                    times[clock][f"{kind}:{reg}"].append(run_time(stamps, warmup, index))
            print(f"  {name}: repeat {rep + 1}/{cfg['repeats']} done", file=sys.stderr, flush=True)
        failure = bench.modules["compiled"].compiled_networks.failure
        if failure is not None:
            raise SystemExit(f"{name}: compilation failed, the 'compiled' runs were eager ({failure}).")
        t = times[cfg["clock"]]
        results[name] = {
            "description": bench.setup.description,
            "batch_size": bench.setup.batch_size,
            "compile_time_s": compile_s,
            "graphs_compiled": graphs,
            "regularizers": {
                reg: {
                    "eager_ms": 1e3 * common.median(t[f"eager:{reg}"]),
                    "compiled_ms": 1e3 * common.median(t[f"compiled:{reg}"]),
                    "hand_ms": 1e3 * common.median(t[f"hand:{reg}"]),
                    "compiled_over_eager": bench_step.paired_ratios(t, f"compiled:{reg}", f"eager:{reg}"),
                    "compiled_over_hand": bench_step.paired_ratios(t, f"compiled:{reg}", f"hand:{reg}"),
                    "eager_over_hand": bench_step.paired_ratios(t, f"eager:{reg}", f"hand:{reg}"),
                }
                for reg in regs
            },
            "step_time_s": {c: {v: {**common.spread(vals), "values": vals} for v, vals in times[c].items()} for c in clocks},
        }
    return results


def format_table(results: dict[str, Any], clock: str) -> str:
    rows = []
    for name, e in results.items():
        for reg, r in e["regularizers"].items():
            c = r["compiled_over_eager"]
            rows.append([name, reg, f"{r['eager_ms']:.2f}", f"{r['compiled_ms']:.2f}", f"{r['hand_ms']:.2f}",
                         f"{c['median']:.3f}", f"{c['min']:.2f}-{c['max']:.2f}", f"{r['compiled_over_hand']['median']:.3f}",
                         f"{e['compile_time_s']:.1f}"])
    return (f"Compiled vs eager GANModule vs hand loop: median step time ({clock} clock), paired ratios by repeat\n"
            + common.markdown_table(["setup", "regularizer", "eager ms", "compiled ms", "hand ms", "compiled/eager",
                                     "range", "compiled/hand", "compile s"], rows))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter runs, 3 repeats")
    mode.add_argument("--smoke", action="store_true", help="a few steps, 1 repeat: checks that the script works")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default: by mode)")
    p.add_argument("--steps", type=int, help="timed steps per run (default: by mode; 32 in full mode)")
    p.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=DEFAULT_SETUPS,
                   help=f"default {' '.join(DEFAULT_SETUPS)}; dcgan_digits28 is the DCGAN at MNIST size")
    p.add_argument("--regs", nargs="+", choices=REGS, default=list(REGS))
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1; 0 = torch's default)")
    p.add_argument("--clock", choices=sorted(bench_step.CLOCKS),
                   help="clock of the ratios: cpu (default on the CPU) or wall (default on a GPU); both are saved")
    p.add_argument("--backend", default="inductor",
                   help="torch.compile backend (default inductor; aot_eager compiles in seconds, for checking the script)")
    p.add_argument("--mode", help="torch.compile mode (e.g. max-autotune, reduce-overhead); default: torch's")
    p.add_argument("--out", help="JSON output (default bench/results/bench_compile.json)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    if args.steps is not None:
        cfg["steps"] = args.steps
    device = common.resolve_device(args.device)
    cfg["compile"] = {"backend": args.backend, **({"mode": args.mode} if args.mode else {})}
    cfg["clock"] = args.clock or ("cpu" if device.type == "cpu" else "wall")
    start = time.perf_counter()
    with common.bench_session(device, args.threads):
        machine = common.machine_info(device)
        results = benchmark(args.setups, list(args.regs), cfg, device)
    payload: dict[str, Any] = {}
    for key, (setup, reg) in HEADLINE.items():
        ok = setup in results and reg in results[setup]["regularizers"]
        payload[key] = results[setup]["regularizers"][reg]["compiled_over_eager"]["median"] if ok else None
    payload.update(
        compile_time_s={name: e["compile_time_s"] for name, e in results.items()},
        command=common.command_line(__file__, argv),
        date=machine["date"],
        machine=machine,
        schema=common.SCHEMA_VERSION,
        benchmark="compile",
        mode=mode,
        config={**cfg, "setups": args.setups, "regs": list(args.regs), "loss": "non_saturating",
                "optimizer": f"Adam(lr={bench_step.LR}, betas={bench_step.BETAS})", "n_critic": 1},
        wall_time_s=time.perf_counter() - start,
        setups=results,
    )
    payload["markdown"] = format_table(results, cfg["clock"])
    path = common.write_json(payload, args.out, "bench_compile.json")
    print(payload["markdown"])
    print(f"\nwrote {path} ({payload['wall_time_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()

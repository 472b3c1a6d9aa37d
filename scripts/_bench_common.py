"""Shared helpers of the benchmark scripts: machine description, statistics, device choice, JSON output."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
SCHEMA_VERSION = 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, GPU, library versions, date."""
    import lightning

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torchmetrics
        import torch_fidelity

        info["torchmetrics"] = torchmetrics.__version__
        info["torch_fidelity"] = torch_fidelity.__version__
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    return info


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces this run: ``python <script relative to the working directory> <arguments>``."""
    path = Path(script).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(path), *(sys.argv[1:] if argv is None else argv)])


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu.")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are complete (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stamp(device: torch.device) -> tuple[float, float]:
    """``(wall-clock seconds, process CPU seconds)`` now, after the device's queued work finished.

    The CPU time of a single-threaded process does not count the time other processes hold its core, so on a
    shared machine it measures the work done; on an idle machine the two clocks agree.
    """
    synchronize(device)
    return time.perf_counter(), time.process_time()


@contextlib.contextmanager
def bench_session(device: torch.device, threads: int) -> Iterator[None]:
    """Threads set (CPU, ``threads > 0``), warnings and Lightning's info logs silenced, the global random state
    untouched afterwards: everything is restored on exit, so the scripts can also run inside another process (tests)."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_regan")
    levels = {name: logging.getLogger(name).level for name in names}
    old_threads = torch.get_num_threads()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        if device.type == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def ab_parser(doc: str, default_out: str) -> "argparse.ArgumentParser":
    """The options every side-by-side (A vs B) benchmark takes: --smoke, --repeats, --steps, --device, --out."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps, 1 repeat")
    p.add_argument("--repeats", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help=f"JSON output (default bench/results/{default_out})")
    return p


def ab_config(modes: dict[str, dict[str, Any]], args: Any) -> tuple[str, dict[str, Any]]:
    """The mode (smoke or full) of ``ab_parser``'s arguments and its settings with --repeats/--steps applied."""
    mode = "smoke" if args.smoke else "full"
    cfg = dict(modes[mode])
    cfg.update({k: v for k, v in (("repeats", args.repeats), ("steps", args.steps)) if v is not None})
    return mode, cfg


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the number of values."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def write_json(payload: dict[str, Any], out: Optional[str], default_name: str) -> Path:
    """Write ``payload`` to ``out`` (or ``bench/results/<default_name>``) and return the path."""
    path = Path(out) if out else RESULTS_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISSED"


README_SOURCES = (("bench_step.json", "Training step: GANModule vs a hand-written loop"),
                  ("bench_step_ddp.json", "DDP training step: before (find_unused_parameters) and after"),
                  ("bench_fid.json", "FID evaluation: FIDMonitor vs a raw Inception forward"))


def write_results_readme(directory: Path) -> Optional[Path]:
    """Write ``README.md`` in ``directory`` from the benchmark JSON files there (their commands, machines and
    tables); does nothing unless a JSON of the default name is there."""
    sections = []
    for name, title in README_SOURCES:
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        m = data["machine"]
        sections.append(
            f"## {title}\n\nCommand (from the repository root): `{data['command']}`\n\n"
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch thread(s)), device {m['device']}"
            f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, torch {m['torch']}, lightning {m['lightning']}, "
            f"{m['date']}; load average at the start {m.get('load_average')}. Mode `{data['mode']}`, "
            f"{data['wall_time_s']:.0f} s.\n\n{data.get('markdown', '(no tables: written by an older version of the script; run it again)')}\n"
        )
    if not sections:
        return None
    readme = directory / "README.md"
    readme.write_text(
        "# Benchmark results\n\nGenerated by `scripts/bench_step.py` and `scripts/bench_fid.py` (each rewrites this file "
        "from the JSON files next to it). What the numbers mean: `docs/studies/benchmarks.md`.\n\n" + "\n".join(sections)
    )
    return readme

"""How fast ``regan-train`` answers ``--help`` and bad input (the target: <= 3 s on a 2-core CPU).

Each case runs the console script's entry point from ``pyproject.toml`` (what an installed ``regan-train`` runs) in a
fresh interpreter, ``--repeats`` times; prints the median, min and max wall time, the exit code and the first line
of the answer, and saves everything as JSON (default ``bench/results/bench_cli.json``).

Usage (from the repository root)::

    python scripts/bench_cli.py [--repeats 5] [--with-torch-entry] [--out bench/results/bench_cli.json]

``--with-torch-entry`` also times ``python -m lightning_regan.cli.train --help`` (the same app reached through the
module that imports torch and Lightning first), for comparison.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 3.0

CASES: list[tuple[str, list[str]]] = [
    ("help", ["--help"]),
    ("unknown key", ["modle=dcgan"]),
    ("unknown choice", ["model=dcgna"]),
    ("wrong value type", ["module.ema_decay=abc"]),
    ("unwritable output folder", ["hydra.run.dir=/proc/regan-bench"]),
]


def entry_point(name: str = "regan-train") -> str:
    """``module:function`` of a console script in ``pyproject.toml``."""
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"][name]


def command(entry: str, args: list[str]) -> list[str]:
    module, func = entry.split(":")
    # What a pip-generated console script does.
    code = f"import sys; sys.argv[0] = 'regan-train'; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code, *args]


def time_case(cmd: list[str], repeats: int, cwd: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    times, codes, first = [], set(), ""
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - start)
        codes.add(proc.returncode)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        first = lines[0] if lines else ""
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs_s": [round(t, 3) for t in times], "exit_codes": sorted(codes),
            "first_line": first[:200]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--with-torch-entry", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "bench_cli.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    entry = entry_point()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(name, command(entry, a)) for name, a in CASES]
        if args.with_torch_entry:
            cases.append(("help via lightning_regan.cli.train (imports torch first)",
                          [sys.executable, "-m", "lightning_regan.cli.train", "--help"]))
        for name, cmd in cases:
            results[name] = time_case(cmd, args.repeats, Path(tmp))
            r = results[name]
            ok = "ok" if r["median_s"] <= BOUND_S else "MISSED"
            print(f"{name:58s} median {r['median_s']:6.2f} s  (min {r['min_s']:.2f}, max {r['max_s']:.2f})  "
                  f"exit {r['exit_codes']}  <= {BOUND_S:.0f} s: {ok}\n    {r['first_line']}", flush=True)
    report = {
        "script": "scripts/bench_cli.py", "entry_point": entry, "repeats": args.repeats, "bound_s": BOUND_S,
        "machine": {"cpu_cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

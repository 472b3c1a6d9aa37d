#!/usr/bin/env python
"""Do ``val/d_gap`` and ``val/d_rv`` see D memorize its training set? (issue 21, item 4: the overfitting signal.)

The small-data study's DCGAN of width 8 does not memorize 600 images within its 1,500 G steps (its D gap stays under
0.1 logit while r_t sits at 1): there r_t measures D winning, not D memorizing. This study trains the default
``regan-train`` run (digits, DCGAN, R1, EMA) on so few images that D can memorize them, and compares it with a run
that has plenty (all but 100 of the 1,797 digits, the 100 held out), each through ``regan-train`` with
``OverfittingMonitor`` and ``FIDMonitor`` at the same cadence. Reported per run: the gap and the FID (classifier
features, all 1,797 digits as the reference) at every evaluation, the best FID and its G step, the last FID, and the
gap and r_v at the best and at the end.

Usage::

    python studies/overfitting_signal.py --out studies/results          # 4 runs, ~50 min on a 2-core CPU
    python studies/overfitting_signal.py --quick --out /tmp/q           # a smoke test

Writes ``<out>/overfitting_signal.json`` and ``<out>/overfitting_signal.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
#: name -> (data.limit, augment)
RUNS: dict[str, tuple[int, str]] = {
    "digits_64-none": (64, "none"),
    "digits_64-diffaugment": (64, "diffaugment"),
    "digits_64-ada": (64, "ada"),
    "digits_1697-none": (1697, "none"),
}
DEFAULTS = {"max_g_steps": 3000, "every": 250, "seed": 0}
QUICK = {"max_g_steps": 40, "every": 20, "seed": 0}


def overrides(limit: int, augment: str, run_dir: Path, max_g_steps: int, every: int, seed: int) -> list[str]:
    """The default run on ``limit`` digits, both monitors every ``every`` G steps, to the end of the budget."""
    return [f"data.limit={limit}", f"augment={augment}", "early_stopping=none", f"max_g_steps={max_g_steps}",
            f"callbacks.fid.every_n_g_steps={every}", "callbacks=[fid,overfitting,summary]", "logger=none",
            "trainer.enable_progress_bar=false", f"seed={seed}", f"output_dir={run_dir}"]


def train(name: str, limit: int, augment: str, work: Path, settings: dict[str, int]) -> dict[str, Any]:
    """One ``regan-train`` run (kept when its summary exists) and its record."""
    run_dir = work / name
    if not (run_dir / "summary.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "lightning_regan.cli.train",
                                   *overrides(limit, augment, run_dir, **settings)],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
        if proc.returncode:
            raise RuntimeError(f"{name}: regan-train failed (exit {proc.returncode}); see {run_dir / 'train.log'}")
    return record(name, limit, augment, json.loads((run_dir / "summary.json").read_text()))


def record(name: str, limit: int, augment: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Gap and FID per evaluation from a run's ``summary.json``, and the figures the report quotes."""
    fid = {int(g): float(f) for g, f in summary["fid_history"]}
    keys = ("g_step", "d_train", "d_heldout", "d_gap", "d_generated", "d_rv")
    rows = [{**dict(zip(keys, row)), "g_step": int(row[0]), "fid": fid.get(int(row[0]))}
            for row in summary["overfitting"]["history"]]
    best = min((r for r in rows if r["fid"] is not None), key=lambda r: r["fid"])
    return {"name": name, "limit": limit, "augment": augment, "history": rows, "best_fid": best["fid"],
            "best_g_step": best["g_step"], "last_fid": rows[-1]["fid"], "gap_at_best": best["d_gap"],
            "gap_last": rows[-1]["d_gap"], "rv_at_best": best.get("d_rv"), "rv_last": rows[-1].get("d_rv"),
            "wall_time_s": summary.get("wall_time_s")}


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Overfitting signal: D's gap between training and held-out reals", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; wall time {report['wall_s']:.0f} s; "
             f"{report['machine']}.  ",
             f"Setup: `regan-train` defaults (digits, DCGAN, R1, EMA), {report['settings']['max_g_steps']} G steps, "
             f"FID (classifier features) and `val/d_gap` every {report['settings']['every']} G steps, seed "
             f"{report['settings']['seed']}. `data.limit=N` trains on N digits; the other 1,797 - N are the held-out "
             "reals (512 of each side scored, or all there are).", "",
             "| run | best FID | at G step | last FID | last / best | D gap at best | D gap last | r_v at best | "
             "r_v last |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['name']} | {r['best_fid']:.1f} | {r['best_g_step']} | {r['last_fid']:.1f} | "
                     f"{r['last_fid'] / r['best_fid']:.2f} | {r['gap_at_best']:.2f} | {r['gap_last']:.2f} | "
                     f"{_num(r.get('rv_at_best'))} | {_num(r.get('rv_last'))} |")
    lines += ["", "r_v = D gap / (D's mean logit on training reals - on generated samples): 0 when D scores unseen "
              "reals like the ones it trained on, 1 when it scores them like fakes (`val/d_rv`; - where D does not "
              "score the training reals above the fakes).", "", "Per evaluation (G step: D gap / r_v / FID):", ""]
    for r in report["runs"]:
        lines.append(f"- {r['name']}: " + ", ".join(f"{h['g_step']}: {h['d_gap']:.2f} / {_num(h.get('d_rv'))} / "
                                                    f"{h['fid']:.1f}" for h in r["history"]))
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few G steps: a smoke test")
    parser.add_argument("--work", type=Path, default=Path("/tmp/overfitting_signal"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else DEFAULTS
    command = "python studies/overfitting_signal.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda item: train(item[0], *item[1], args.work, settings), RUNS.items()))
    report = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "wall_s": time.perf_counter() - start, "settings": settings,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overfitting_signal.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "overfitting_signal.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

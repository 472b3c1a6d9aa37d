#!/usr/bin/env python
"""Real-Inception confirmation of the small-data study (issue 21): one seed at 600 images, scored by Inception FID.

The small-data study grades in the features of a small classifier of each dataset (Inception on a 2-core CPU reads
~4.4 images/s). This confirms its main finding on Inception features: Fashion-MNIST at 600 training images, seed 0,
the study's DCGAN (width 8, batch 32, no regularizer, 1,500 G steps), trained once without augmentation and once
with DiffAugment through ``regan-train``; the best checkpoint of each run (by its own monitor, classifier features
every 250 G steps) is scored by ``regan-eval`` with Inception features: ``--num-samples`` generated images against
as many test-split images (``reference_split=test``).

Usage::

    python studies/small_data_inception.py --out studies/results            # ~8 min on a 2-core CPU
    python studies/small_data_inception.py --quick --data digits --out /tmp/q  # a smoke test

Writes ``<out>/small_data_inception.json`` (each run's Inception FID, G step of its best checkpoint and classifier
best FID, the reduction, the command) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("REGAN_DATA_ROOT", str(REPO.parent / "shared" / "data"))
AUGMENTS = ("none", "diffaugment")


def train_overrides(data: str, augment: str, run_dir: Path, steps: int, every: int, seed: int) -> list[str]:
    """The small-data study's run (``studies/small_data_study.py``) as ``regan-train`` overrides, with a checkpoint."""
    out = [f"data={data}", "data.batch_size=32", "model=dcgan", "model.generator.channels=8",
           "model.discriminator.channels=8", "regularizer=none", f"augment={augment}", "early_stopping=none",
           "callbacks=[fid,checkpoint,best_generator,summary]", "callbacks.fid.feature_extractor=classifier",
           f"callbacks.fid.every_n_g_steps={every}", "logger=none", "trainer.enable_progress_bar=false",
           f"seed={seed}", f"max_g_steps={steps}", f"output_dir={run_dir}"]
    if data != "digits":
        out += [f"data.root={DATA_ROOT}", "data.limit=600"]
    return out


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); see {log}")


def confirm(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    runs: dict[str, Any] = {}
    for augment in AUGMENTS:
        run_dir = work / augment
        run_dir.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "lightning_regan.cli.train",
             *train_overrides(args.data, augment, run_dir, args.max_g_steps, args.every, args.seed)], run_dir / "train.log")
        summary = json.loads((run_dir / "summary.json").read_text())
        scored = run_dir / "inception.json"
        eval_cmd = [sys.executable, "-m", "lightning_regan.cli.evaluate", str(run_dir / "checkpoints" / "best.ckpt"),
                    "--feature-extractor", "inception", "--num-samples", str(args.num_samples),
                    "--num-real-samples", str(args.num_samples), "--no-progress", "--json", str(scored)]
        if args.weights is not None:
            eval_cmd += ["--weights", str(args.weights)]
        if args.data != "digits":
            eval_cmd += ["--data-root", DATA_ROOT, "--data-option", "reference_split=test"]
        run(eval_cmd, run_dir / "eval.log")
        inception = json.loads(scored.read_text())
        runs[augment] = {"inception_fid": float(inception["fid"]), "best_g_step": summary.get("best_generator", {}).get(
            "best_g_step"), "classifier_best_fid": summary.get("best_fid"), "g_steps": summary["g_steps"]}
    none, diff = runs["none"]["inception_fid"], runs["diffaugment"]["inception_fid"]
    return {"runs": runs, "inception_fid_reduction_diffaugment": 1 - diff / none if none else None}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "mnist", "digits"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-g-steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--weights", type=Path, help="Inception weights (default: where regan-fid-weights put them)")
    parser.add_argument("--quick", action="store_true", help="tiny budget and sample counts (a smoke test)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/small_data_inception"))
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_g_steps, args.every, args.num_samples = 8, 4, 16
    command = "python studies/small_data_inception.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    report = {"command": command.strip(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "data": args.data,
              "data_limit": None if args.data == "digits" else 600, "seed": args.seed,
              "max_g_steps": args.max_g_steps, "num_samples": args.num_samples, **confirm(args)}
    report["wall_time_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_data_inception.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

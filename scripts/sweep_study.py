#!/usr/bin/env python
"""How many G steps does pruning save in a sweep, and does the pruned sweep still find the best trial?

For each sampler seed, runs the same 16-trial sweep twice through ``regan-train -m``: once with a pruner
(successive halving on ``val/fid``) and once with ``pruner=none``. The sampler is random with that seed, so both
sweeps visit the same configurations in the same order (the report checks this) and each trial trains with the
same training seed: a pruned trial is the unpruned one cut short. Pruner: conf/hparams_search/ring_lr_r1.yaml's
(median after 3 finished trials) or ``--pruner``. Reports per seed: G steps run with and without
pruning (and their ratio), trials pruned, the best trial of each sweep and the gap between their best FIDs.

Targets: G steps with pruning <= 40 % of without, and the same best trial (or its best FID within 5 %), for every
seed.

Usage::

    nice -n 5 python scripts/sweep_study.py                      # the study (ring, 16 trials x 2 seeds)
    python scripts/sweep_study.py --quick --out /tmp/sweep_study  # tiny budgets, a smoke test

Writes ``<out>/sweep_study.json`` and ``<out>/sweep_study.md`` (default out: bench/results); each sweep keeps its
directory under ``<work>/seed<s>_<pruner>/`` (default work: a temporary folder). A sweep directory that already
holds the study resumes it (finished trials are not run again), so ``--work`` makes the study restartable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_regan.sweep import best_record, load_study, trial_records  # noqa: E402

#: The sweep: the ring experiment, learning rates x R1 weight (conf/hparams_search/ring_lr_r1.yaml).
BASE = ["experiment=ring", "hparams_search=ring_lr_r1", "~callbacks.samples", "logger=none",
        "~callbacks.checkpoint", "trainer.enable_progress_bar=false"]
QUICK = ["data.n_samples=2048", "callbacks.fid.num_samples=256", "callbacks.fid.every_n_g_steps=10", "model.generator.hidden=[32,32]",
         "model.discriminator.hidden=[32,32]"]


def run_sweep(sweep_dir: Path, seed: int, pruner: str, args: argparse.Namespace) -> float:
    """Run (or resume) one sweep; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "lightning_regan.cli.train", *BASE, f"max_g_steps={args.max_g_steps}",
           f"pruner={pruner}", f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.n_trials={args.n_trials}",
           f"hydra.sweep.dir={sweep_dir}", *(QUICK if args.quick else [])]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    print("$", shlex.join(cmd), flush=True)
    start = time.monotonic()
    with open(sweep_dir.parent / f"{sweep_dir.name}.log", "a") as log_file:
        proc = subprocess.run(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=sweep_dir.parent)
    if proc.returncode != 0:
        raise SystemExit(f"sweep {sweep_dir} failed (exit {proc.returncode}); see {sweep_dir}.log")
    return time.monotonic() - start


def compare(pruned_dir: Path, full_dir: Path) -> dict[str, Any]:
    """The figures of one seed: G steps, pruned trials, best trials and their FID gap."""
    out: dict[str, Any] = {}
    studies = {}
    for name, path in (("pruned", pruned_dir), ("unpruned", full_dir)):
        study = load_study(str(path / "optuna.journal"))
        records = trial_records(study)
        best = best_record(study, records)
        studies[name] = records
        out[name] = {
            "trials": len(records),
            "g_steps": sum(int(r["g_steps"]) for r in records),
            "pruned_trials": sum(r["status"] == "pruned" for r in records),
            "best_trial": None if best is None else best["trial"],
            "best_fid": None if best is None else best["best_fid"],
            "best_params": None if best is None else best["params"],
            # Time the trials took (start to end of each), so a resumed study still reports what the sweep cost.
            "trials_time_min": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                                   if t.datetime_complete is not None and t.datetime_start is not None) / 60,
            "rows": [{k: r[k] for k in ("trial", "params", "g_steps", "pruned_at", "best_fid", "status")}
                     for r in records],
        }
    same_configs = [r["params"] for r in studies["pruned"]] == [r["params"] for r in studies["unpruned"]]
    p, u = out["pruned"], out["unpruned"]
    out["same_configurations"] = same_configs
    out["g_steps_ratio"] = p["g_steps"] / u["g_steps"]
    out["same_best_trial"] = p["best_trial"] == u["best_trial"]
    out["best_fid_gap"] = (p["best_fid"] / u["best_fid"] - 1.0) if p["best_fid"] and u["best_fid"] else None
    out["meets_targets"] = bool(out["g_steps_ratio"] <= 0.40 and (
        out["same_best_trial"] or (out["best_fid_gap"] is not None and out["best_fid_gap"] <= 0.05)))
    return out


#: Pruners replayed on the unpruned sweeps' FID histories: (label, class name, keyword arguments).
REPLAY_PRUNERS: list[tuple[str, str, dict[str, Any]]] = [
    *[(f"successive halving, first rung {m}, factor {rf}", "SuccessiveHalvingPruner",
       {"min_resource": m, "reduction_factor": rf}) for m in (100, 300) for rf in (2, 3, 4)],
    *[(f"Hyperband, min {m}, factor {rf}", "HyperbandPruner",
       {"min_resource": m, "max_resource": "MAX", "reduction_factor": rf}) for m in (100, 200) for rf in (2, 3, 4)],
    *[(f"median, {n} startup trials, warm-up {w}", "MedianPruner", {"n_startup_trials": n, "n_warmup_steps": w})
      for n in (1, 2, 3, 4) for w in (100, 300)],
    *[(f"25th percentile, {n} startup trials, warm-up {w}", "PercentilePruner",
       {"percentile": 25.0, "n_startup_trials": n, "n_warmup_steps": w}) for n in (2, 3) for w in (100, 300)],
]


def replay(full_dir: Path, pruner: Any) -> dict[str, Any]:
    """Feed the unpruned sweep's FID histories, trial by trial in order, through ``pruner`` (what OptunaPruning
    reports); a pruned trial's history is the unpruned one's prefix (deterministic runs), so this is the pruned
    sweep without training. Returns the G-step ratio and the best trial found."""
    import optuna

    trials = [t for t in load_study(str(full_dir / "optuna.journal")).trials if t.state.name == "COMPLETE"]
    # A fixed name: Hyperband assigns trials to brackets by a hash of the study name and trial number.
    study = optuna.create_study(study_name="replay", pruner=pruner)
    steps, kept = 0, []
    for t in trials:
        trial = study.ask()
        pruned_at = None
        for step, value in sorted(t.intermediate_values.items()):
            trial.report(value, step)
            if trial.should_prune():
                pruned_at = step
                break
        if pruned_at is None:
            study.tell(trial, t.value)
            steps += int(t.user_attrs["g_steps"])
            kept.append(t)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            steps += pruned_at
    best_all = min(trials, key=lambda t: t.value)
    best = min(kept, key=lambda t: t.value)
    return {"g_steps_ratio": steps / sum(int(t.user_attrs["g_steps"]) for t in trials),
            "best_trial": best.number, "same_best_trial": best.number == best_all.number,
            "best_fid_gap": best.value / best_all.value - 1.0}


def replay_all(full_dirs: dict[str, Path], max_g_steps: int) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for label, cls, kwargs in REPLAY_PRUNERS:
        kwargs = {k: (max_g_steps if v == "MAX" else v) for k, v in kwargs.items()}
        per_seed = {seed: replay(d, getattr(optuna.pruners, cls)(**kwargs)) for seed, d in full_dirs.items()}
        rows.append({"pruner": label, "class": cls, "kwargs": kwargs, "seeds": per_seed,
                     "meets_targets": all(r["g_steps_ratio"] <= 0.40
                                          and (r["same_best_trial"] or r["best_fid_gap"] <= 0.05)
                                          for r in per_seed.values())})
    return rows


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep_study.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Sweep pruning study", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']}; {results['date']}; wall time of this invocation "
             f"{results['wall_time_min']:.1f} min (sweeps already in --work are resumed, not rerun; the trial times "
             f"below are what the sweeps took).",
             "",
             f"Sweep: {results['sweep']}", "",
             "| sampler seed | trials | pruned | G steps pruned sweep | unpruned | ratio "
             "| best trial pruned / unpruned | best FID pruned / unpruned | gap | trial time pruned / unpruned | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, r in results["seeds"].items():
        p, u = r["pruned"], r["unpruned"]
        gap = "" if r["best_fid_gap"] is None else f"{r['best_fid_gap']:+.1%}"
        lines.append(f"| {seed} | {p['trials']} | {p['pruned_trials']} | {p['g_steps']:,} | {u['g_steps']:,} | "
                     f"{r['g_steps_ratio']:.0%} | {p['best_trial']} / {u['best_trial']} | "
                     f"{p['best_fid']:.4g} / {u['best_fid']:.4g} | {gap} | "
                     f"{p['trials_time_min']:.1f} / {u['trials_time_min']:.1f} min | "
                     f"{'met' if r['meets_targets'] else 'NOT met'} |")
    lines += ["", f"Targets (G steps with pruning <= 40 % of without; same best trial or best FID within 5 %; "
                  f"every seed): **{'met' if results['meets_targets'] else 'NOT met'}**. Same configurations in "
                  f"both sweeps of a seed: {all(r['same_configurations'] for r in results['seeds'].values())}.", ""]
    for seed, r in results["seeds"].items():
        lines += [f"## Sampler seed {seed}: trials of the pruned sweep (unpruned best FID beside)", "",
                  "| trial | r1 weight | D lr | G lr | G steps | pruned at | best FID | status | unpruned best FID |",
                  "|---|---|---|---|---|---|---|---|---|"]
        full = {row["trial"]: row for row in r["unpruned"]["rows"]}
        for row in r["pruned"]["rows"]:
            prm = row["params"]
            ub = full.get(row["trial"], {}).get("best_fid")
            lines.append(
                f"| {row['trial']} | {prm.get('regularizer.r1.weight', 0):.3g} | "
                f"{prm.get('module.d_optimizer.lr', 0):.3g} | {prm.get('module.g_optimizer.lr', 0):.3g} | "
                f"{row['g_steps']} | {row['pruned_at'] or ''} | "
                f"{'' if row['best_fid'] is None else format(row['best_fid'], '.4g')} | {row['status']} | "
                f"{'' if ub is None else format(ub, '.4g')} |")
        lines.append("")
    if results.get("replay"):
        seeds = list(results["seeds"])
        lines += ["## Other pruners, replayed on the unpruned sweeps", "",
                  "Each unpruned sweep's FID histories fed trial by trial through the pruner (a pruned trial's history "
                  "is the unpruned one's prefix): G steps against the unpruned sweep, and the best trial found.", "",
                  "| pruner | " + " | ".join(f"seed {s}: G steps, best trial (gap)" for s in seeds) + " | targets |",
                  "|---|" + "---|" * len(seeds) + "---|"]
        for row in results["replay"]:
            cells = [f"{row['seeds'][s]['g_steps_ratio']:.0%}, {row['seeds'][s]['best_trial']} "
                     f"({row['seeds'][s]['best_fid_gap']:+.0%})" for s in seeds]
            lines.append(f"| {row['pruner']} | " + " | ".join(cells) + f" | {'met' if row['meets_targets'] else ''} |")
        lines.append("")
    (out_dir / "sweep_study.md").write_text("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds")
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--max-g-steps", type=int, default=1000)
    parser.add_argument("--pruner", default="median", help="conf/pruner/ choice for the pruned sweep")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=None, help="sweep directories (reused: resumes)")
    args = parser.parse_args(argv)
    if args.quick and "--max-g-steps" not in (argv if argv is not None else sys.argv):
        args.max_g_steps = 40
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep_study_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    seeds: dict[str, Any] = {}
    for seed in args.seeds:
        dirs = {}
        for pruner in (args.pruner, "none"):
            dirs[pruner] = work / f"seed{seed}_{pruner}"
            wall = run_sweep(dirs[pruner], seed, pruner, args)
            print(f"seed {seed}, pruner {pruner}: {wall / 60:.1f} min", flush=True)
        seeds[str(seed)] = compare(dirs[args.pruner], dirs["none"])
    results = {
        "command": "python scripts/sweep_study.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), Python "
                   f"{platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_min": (time.monotonic() - start) / 60,
        "sweep": (f"`regan-train -m {' '.join(BASE)} max_g_steps={args.max_g_steps} pruner={args.pruner}|none "
                  f"hydra.sweeper.sampler.seed=<seed>`: {args.n_trials} trials of the 8-mode ring (MLP GAN, R1, EMA "
                  f"of G), random sampler over log-uniform D and G learning rates in [1e-4, 5e-3] and R1 weight in "
                  f"[0.01, 10]; FID on the 2-D points themselves (identity features) every 100 G steps; trials run "
                  f"one after the other (basic launcher)." + (" QUICK smoke-test budgets." if args.quick else "")),
        "pruner": args.pruner,
        "seeds": seeds,
        "meets_targets": all(r["meets_targets"] for r in seeds.values()),
        "replay": replay_all({str(s): work / f"seed{s}_none" for s in args.seeds}, args.max_g_steps),
    }
    write_report(results, args.out)
    print((args.out / "sweep_study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

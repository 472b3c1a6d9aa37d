#!/usr/bin/env python
"""How many G steps does early termination save, and what does it cost in best FID?

Runs every (setup, regularizer, seed) twice through ``regan-train``, one run after the other: once with
``early_stopping=default`` and once with ``early_stopping=none``; same seed, same budget, same FID cadence, so
the run with early termination is the full run cut short (the report checks this: same FID history up to the
stop). Reports per pair and overall: G steps run, G steps saved (``1 - steps_with / steps_without``), the best
FID with and without stopping, and the gap (``best_with / best_without - 1``; positive = stopping lost quality).
Also the "oracle" saving, ``1 - best_fid_step_without / steps_without``: what a stopper that knew the future
could save with no gap at all.

Usage::

    python scripts/early_stopping_study.py --jobs 2          # the full study, two runs at a time (42 min, 2-core CPU)
    python scripts/early_stopping_study.py --quick           # tiny budgets, seconds per run (a smoke test)
    python scripts/early_stopping_study.py --setups ring --seeds 0 1 2 --out /tmp/study

Writes ``<out>/early_stopping_study.json`` and ``<out>/early_stopping_study.md`` (default out: bench/results) and
keeps each run's directory under ``<work>/<run name>/`` (default work: a temporary folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setup:
    """A base configuration of the study; regularizers are swapped in, with and without early termination."""

    description: str
    overrides: tuple[str, ...]
    max_g_steps: int
    # Per regularizer: the overrides that select it (default: ``regularizer=<name>``).
    regularizers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    quick_max_g_steps: int = 60
    quick_overrides: tuple[str, ...] = ()

    def regularizer_overrides(self, name: str) -> list[str]:
        return list(self.regularizers.get(name, (f"regularizer={name}",)))


SETUPS: dict[str, Setup] = {
    "digits": Setup(
        description="DCGAN (width 32) on sklearn's 8x8 digits, non-saturating loss, EMA of G 0.995, a budget of "
                    "10,000 G steps; FID of the EMA generator every 200 G steps on 1,000 samples in a small digits "
                    "classifier's features",
        overrides=("data=digits", "model=dcgan", "model.generator.channels=32", "model.discriminator.channels=32",
                   "module.ema_decay=0.995", "callbacks.fid.every_n_g_steps=200", "callbacks.fid.num_samples=1000"),
        max_g_steps=10000,
        quick_overrides=("callbacks.fid.every_n_g_steps=10", "callbacks.fid.num_samples=200", "model.generator.channels=16",
                         "model.discriminator.channels=16"),
    ),
    "ring": Setup(
        description="`experiment=ring` with a budget of 5,000 G steps (MLP on the 8-Gaussian ring, non-saturating "
                    "loss, EMA of G 0.995, FID "
                    "plateau warmup 1,000 G steps), FID every 100 G steps on 2,000 points (exact Frechet distance "
                    "of the 2-D points)",
        overrides=("experiment=ring", "callbacks.fid.every_n_g_steps=100"),
        max_g_steps=5000,
        regularizers={"l2": ("regularizer=l2",), "lecam": ("regularizer=lecam",)},  # presets compose (issue 11)
        quick_overrides=("callbacks.fid.every_n_g_steps=10", "callbacks.fid.num_samples=200"),
    ),
}
# R1: zero-centred gradient penalty (the default); L2: the seed's weight penalty R(D); LeCam: output anchoring.
REGULARIZERS = ("r1", "l2", "lecam")
COMMON = ("logger=none", "trainer.enable_progress_bar=false", "callbacks.samples.every_n_g_steps=0")
ES_ON, ES_OFF = "early_stopping=default", "early_stopping=none"
# --quick: budgets far too short for the default warmup and patience; make the FID rule stop after 2 evaluations
# without a 50 % improvement, so that the smoke test has a stop to account for.
QUICK_ES = ("early_stopping.fid_plateau.warmup_g_steps=0", "early_stopping.fid_plateau.patience=2",
            "early_stopping.fid_plateau.min_delta=0.5")


@dataclass
class Run:
    setup: str
    regularizer: str
    seed: int
    early_stopping: bool
    overrides: list[str]

    @property
    def name(self) -> str:
        return f"{self.setup}-{self.regularizer}-s{self.seed}-{'es' if self.early_stopping else 'full'}"


def plan(setups: list[str], regularizers: list[str], seeds: list[int], quick: bool,
         max_g_steps: Optional[int] = None) -> list[Run]:
    """The runs of the study, paired: for each (setup, regularizer, seed) one with and one without stopping."""
    runs = []
    for name in setups:
        setup = SETUPS[name]
        budget = max_g_steps or (setup.quick_max_g_steps if quick else setup.max_g_steps)
        for reg in regularizers:
            for seed in seeds:
                base = [*setup.overrides, *setup.regularizer_overrides(reg), f"seed={seed}", f"max_g_steps={budget}",
                        *COMMON, *(setup.quick_overrides if quick else ())]
                runs.append(Run(name, reg, seed, True, [ES_ON, *base, *(QUICK_ES if quick else ())]))
                runs.append(Run(name, reg, seed, False, [ES_OFF, *base]))
    return runs


def execute(run: Run, work: Path, timeout_s: int, threads: Optional[int], resume: bool = False) -> dict[str, Any]:
    """Run one ``regan-train`` job and return its summary.json (with the command and the process's wall time).

    With ``resume``, a run directory holding a finished run of the very same command is read instead of rerun.
    """
    run_dir = work / run.name
    command = shlex.join(["regan-train", *run.overrides])
    record_path = run_dir / "study_run.json"  # written last: its presence means the run finished
    reused = False
    if resume and record_path.is_file() and json.loads(record_path.read_text()).get("command") == command:
        elapsed, reused = float(json.loads(record_path.read_text())["process_wall_s"]), True
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        exe = shutil.which("regan-train") or str(Path(sys.executable).with_name("regan-train"))
        cmd = [exe, *run.overrides, f"hydra.run.dir={run_dir}"]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=work)
        elapsed = time.perf_counter() - start
        (work / f"{run.name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not (run_dir / "summary.json").is_file():
            raise RuntimeError(f"{run.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        record_path.write_text(json.dumps({"command": command, "process_wall_s": elapsed}) + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary.get("fid_history") or []
    return {
        "name": run.name, "setup": run.setup, "regularizer": run.regularizer, "seed": run.seed,
        "early_stopping": run.early_stopping,
        **{k: summary.get(k) for k in ("status", "stop_reason", "g_steps", "best_fid", "best_fid_step",
                                       "wall_time_s", "fid_eval_time_s", "fid_history")},
        "last_fid": history[-1][1] if history else None,
        "modes_at_best": modes_at(summary.get("mode_coverage"), summary.get("best_fid_step")),
        "fid_evals": len(history),
        "process_wall_s": elapsed,
        "reused": reused,
        "command": command,
        "run_dir": str(run_dir),
    }


def modes_at(coverage: Optional[dict[str, Any]], g_step: Optional[int]) -> Optional[str]:
    """``"covered/total"`` modes at ``g_step`` from summary.json's ``mode_coverage`` (2-D mixtures), else None."""
    if not coverage or g_step is None:
        return None
    covered = [modes for step, modes, _ in coverage.get("history", []) if step == g_step]
    return f"{covered[0]}/{coverage['num_modes']}" if covered else None


def pair_result(with_es: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """The figures of one (setup, regularizer, seed): steps saved, best-FID gap, oracle saving."""
    steps_with, steps_without = int(with_es["g_steps"]), int(without["g_steps"])
    best_with, best_without = with_es["best_fid"], without["best_fid"]
    gap = None
    if best_with is not None and best_without is not None and best_without > 0:
        gap = best_with / best_without - 1.0
    oracle = None
    if without["best_fid_step"] is not None and steps_without:
        oracle = 1.0 - int(without["best_fid_step"]) / steps_without
    history_with, history_without = with_es["fid_history"] or [], without["fid_history"] or []
    return {
        "setup": with_es["setup"], "regularizer": with_es["regularizer"], "seed": with_es["seed"],
        "g_steps_with_es": steps_with, "g_steps_without": steps_without,
        "g_steps_saved": 1.0 - steps_with / steps_without if steps_without else 0.0,
        "status_with_es": with_es["status"], "stop_reason_with_es": with_es["stop_reason"],
        "best_fid_with_es": best_with, "best_fid_step_with_es": with_es["best_fid_step"],
        "best_fid_without": best_without, "best_fid_step_without": without["best_fid_step"],
        "best_fid_gap": gap,
        # What a fixed budget leaves you with when nothing restores the best generator.
        "last_fid_without": without.get("last_fid"),
        "modes_at_best_with_es": with_es.get("modes_at_best"), "modes_at_best_without": without.get("modes_at_best"),
        "oracle_g_steps_saved": oracle,
        # Same seed: until the stop both runs are one run, so their FID histories must agree up to there.
        "same_run_until_stop": history_with == history_without[:len(history_with)],
        "run_with_es": with_es["name"], "run_without": without["name"],
    }


def _median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def aggregate(pairs: list[dict[str, Any]], runs: list[dict[str, Any]], max_gap: float, min_saved: float
              ) -> dict[str, Any]:
    """Figures over ``pairs`` (and the FID cost over ``runs``), with the issue's target."""
    saved = [p["g_steps_saved"] for p in pairs]
    gaps = [p["best_fid_gap"] for p in pairs if p["best_fid_gap"] is not None]
    oracle = [p["oracle_g_steps_saved"] for p in pairs if p["oracle_g_steps_saved"] is not None]
    total_with = sum(p["g_steps_with_es"] for p in pairs)
    total_without = sum(p["g_steps_without"] for p in pairs)
    evals = sum(r["fid_evals"] for r in runs)
    eval_time = sum(r["fid_eval_time_s"] or 0.0 for r in runs)
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "g_steps_saved_mean": statistics.fmean(saved) if saved else None,
        "g_steps_saved_median": _median(saved),
        "g_steps_saved_total": 1.0 - total_with / total_without if total_without else None,
        "best_fid_gap_median": _median(gaps),
        "best_fid_gap_max": max(gaps) if gaps else None,
        "oracle_g_steps_saved_median": _median(oracle),
        "pairs_within_gap": sum(g <= max_gap for g in gaps),
        "pairs_meeting_target": sum(
            p["g_steps_saved"] >= min_saved and p["best_fid_gap"] is not None and p["best_fid_gap"] <= max_gap
            for p in pairs
        ),
        "fid_evals": evals,
        "fid_eval_s_per_eval": eval_time / evals if evals else None,
        # A fixed budget without best-generator restoration leaves the last generator: how often is it worse?
        "pairs_full_last_worse_than_its_best": sum(
            p.get("last_fid_without") is not None and p["best_fid_without"] is not None
            and p["last_fid_without"] > p["best_fid_without"] for p in pairs
        ),
        "pairs_es_best_better_than_full_last": sum(
            p.get("last_fid_without") is not None and p["best_fid_with_es"] is not None
            and p["best_fid_with_es"] < p["last_fid_without"] for p in pairs
        ),
    }
    result["target_met"] = bool(
        saved and gaps and result["g_steps_saved_median"] >= min_saved and result["best_fid_gap_median"] <= max_gap
    )
    return result


def machine() -> dict[str, Any]:
    """CPU, cores and library versions of this machine."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def _num(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f} %" if signed else f"{100 * value:.0f} %"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the per-pair table, then per-setup and overall figures."""
    target = report["target"]
    m = report["machine"]
    reused = f" ({report['reused_runs']} runs reused from an earlier invocation)" if report.get("reused_runs") else ""
    lines = [
        "# Early-termination study",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}; {report['date']}; "
        f"study wall time {report['wall_time_s'] / 60:.1f} min{reused}; the runs took "
        f"{sum(r['process_wall_s'] for r in report['runs']) / 60:.1f} min in total ({report.get('jobs', 1)} at a time).",
        "",
        "| setup | regularizer | seed | G steps with ES | without | saved | oracle | stop reason | "
        "best FID with ES (step) | without (step) | gap | last FID without | modes at best with ES / without |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["pairs"]:
        lines.append(
            f"| {p['setup']} | {p['regularizer']} | {p['seed']} | {p['g_steps_with_es']} | {p['g_steps_without']} | "
            f"{_pct(p['g_steps_saved'])} | {_pct(p['oracle_g_steps_saved'])} | {p['stop_reason_with_es']} | "
            f"{_num(p['best_fid_with_es'])} ({p['best_fid_step_with_es']}) | "
            f"{_num(p['best_fid_without'])} ({p['best_fid_step_without']}) | {_pct(p['best_fid_gap'], signed=True)} | "
            f"{_num(p.get('last_fid_without'))} | {p.get('modes_at_best_with_es') or '-'} / {p.get('modes_at_best_without') or '-'} |"
        )
    lines += [
        "",
        "| | pairs | G steps saved: median | mean | total | oracle median | best-FID gap: median | max | "
        f"pairs with saved >= {_pct(target['min_g_steps_saved'])} and gap <= {_pct(target['max_best_fid_gap'])} | "
        "full run's last FID worse than its best | ES best better than full run's last | FID s / evaluation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, o in [*report["by_setup"].items(), ("**all**", report["overall"])]:
        lines.append(
            f"| {name} | {o['pairs']} | {_pct(o['g_steps_saved_median'])} | {_pct(o['g_steps_saved_mean'])} | "
            f"{_pct(o['g_steps_saved_total'])} | {_pct(o['oracle_g_steps_saved_median'])} | "
            f"{_pct(o['best_fid_gap_median'], signed=True)} | {_pct(o['best_fid_gap_max'], signed=True)} | "
            f"{o['pairs_meeting_target']} of {o['pairs']} | {o['pairs_full_last_worse_than_its_best']} of {o['pairs']} | "
            f"{o['pairs_es_best_better_than_full_last']} of {o['pairs']} | {_num(o['fid_eval_s_per_eval'])} |"
        )
    o = report["overall"]
    lines += [
        "",
        f"Target (median over pairs: >= {_pct(target['min_g_steps_saved'])} of G steps saved, best FID <= "
        f"{_pct(target['max_best_fid_gap'])} worse): **{'met' if o['target_met'] else 'not met'}**. "
        "Oracle: G steps after the full run's best FID (what stopping at the best evaluation would save). "
        f"Runs with and without stopping identical up to the stop: "
        f"{sum(p['same_run_until_stop'] for p in report['pairs'])} of {len(report['pairs'])} pairs.",
        "",
        "Setups:",
    ]
    lines += [f"- `{name}`: {SETUPS[name].description}." for name in report["setups"]]
    return "\n".join(lines) + "\n"


def replay_fid_plateau(history: list[list[float]], budget: int, **rule_args: Any) -> dict[str, Any]:
    """Where ``FIDPlateau(**rule_args)`` would have stopped a run with this FID ``history``, and what it would keep.

    The rule is fed the evaluations in order, as ``EarlyTermination`` feeds it, so this is exact for the FID rule
    (the loss-plateau and divergence rules, which can only stop earlier, are not replayed).
    """
    from lightning_regan.stopping import FIDPlateau

    rule = FIDPlateau(**rule_args)
    stop = budget
    for g_step, fid in history:
        if rule.update(int(g_step), {rule.monitor: fid})[0]:
            stop = int(g_step)
            break
    kept = [fid for g_step, fid in history if g_step <= stop]
    best_full = min(fid for _, fid in history)
    return {"g_steps": stop, "g_steps_saved": 1.0 - stop / budget, "best_fid": min(kept),
            "best_fid_gap": min(kept) / best_full - 1.0}


def replay(report: dict[str, Any], grid: dict[str, list[Any]], min_saved: float, max_gap: float) -> str:
    """A Markdown table: the FID rule with every combination of ``grid`` replayed on the report's full runs."""
    import itertools

    full = [r for r in report["runs"] if not r["early_stopping"] and r["fid_history"]]
    lines = [f"Replay of FIDPlateau on {len(full)} full runs ({', '.join(sorted({r['setup'] for r in full}))}, seeds "
             f"{sorted({r['seed'] for r in full})}) of `{report['command']}`:", "",
             "| patience | min_delta | window | warmup | saved: median | mean | gap: median | max | "
             f"runs with saved >= {_pct(min_saved)} and gap <= {_pct(max_gap)} |", "|---|---|---|---|---|---|---|---|---|"]
    keys = list(grid)
    for values in itertools.product(*grid.values()):
        args = dict(zip(keys, values))
        results = [replay_fid_plateau(r["fid_history"], int(r["g_steps"]), **args) for r in full]
        saved = [x["g_steps_saved"] for x in results]
        gaps = [x["best_fid_gap"] for x in results]
        good = sum(x["g_steps_saved"] >= min_saved and x["best_fid_gap"] <= max_gap for x in results)
        lines.append(
            f"| {args['patience']} | {args['min_delta']} | {args['window']} | {args['warmup_g_steps']} | "
            f"{_pct(statistics.median(saved))} | {_pct(statistics.fmean(saved))} | "
            f"{_pct(statistics.median(gaps), signed=True)} | {_pct(max(gaps), signed=True)} | {good} of {len(full)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test of the study itself)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--regularizers", nargs="+", default=list(REGULARIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--max-g-steps", type=int, default=None, help="budget of every run (default: per setup)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder of the JSON and Markdown")
    parser.add_argument("--work", type=Path, default=None, help="folder of the runs (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of each run (0: inherit); 1 keeps timings sane on a shared machine")
    parser.add_argument("--max-gap", type=float, default=0.05, help="target: largest acceptable best-FID gap")
    parser.add_argument("--min-saved", type=float, default=0.40, help="target: smallest fraction of G steps saved")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each gets --threads threads); keep jobs x threads <= the CPU cores")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished runs in --work whose command is unchanged (an interrupted study "
                             "goes on where it stopped)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--replay", type=Path, default=None, metavar="JSON",
                        help="no training: replay the FID rule on the full runs of a study's JSON, for every "
                             "combination of --patience/--min-delta/--window/--warmup (setups/seeds filtered by "
                             "--setups/--seeds)")
    parser.add_argument("--patience", type=int, nargs="+", default=[4])
    parser.add_argument("--min-delta", type=float, nargs="+", default=[0.01])
    parser.add_argument("--window", type=int, nargs="+", default=[3])
    parser.add_argument("--warmup", type=int, nargs="+", default=[500])
    args = parser.parse_args(argv)
    if args.max_g_steps is not None and args.max_g_steps < 1:
        parser.error("--max-g-steps must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.replay is not None:
        report = json.loads(args.replay.read_text())
        report["runs"] = [r for r in report["runs"] if r["setup"] in args.setups and r["seed"] in args.seeds]
        grid = {"patience": args.patience, "min_delta": args.min_delta, "window": args.window,
                "warmup_g_steps": args.warmup}
        print(replay(report, grid, args.min_saved, args.max_gap))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="regan-study-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = plan(args.setups, args.regularizers, args.seeds, args.quick, args.max_g_steps)
    print(f"{len(runs)} runs, {args.jobs} at a time, in {work}", flush=True)
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    # Each run is its own regan-train process; threads here only wait on them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(execute, run, work, args.timeout, args.threads, args.resume): run for run in runs}
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results[futures[future].name] = r
            print(f"  {r['name']}: {r['status']} ({r['stop_reason']}) at G step {r['g_steps']}, best FID "
                  f"{_num(r['best_fid'])} at {r['best_fid_step']}, {r['process_wall_s']:.0f} s"
                  f"{' (reused)' if r['reused'] else ''}", flush=True)
    pairs = [pair_result(results[run.name], results[run.name[:-len("es")] + "full"]) for run in runs
             if run.early_stopping]
    run_list = [results[run.name] for run in runs]  # plan order, whatever order they finished in
    report = {
        "command": shlex.join(["python", "scripts/early_stopping_study.py",
                               *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "setups": args.setups,
        "regularizers": args.regularizers,
        "seeds": args.seeds,
        "target": {"min_g_steps_saved": args.min_saved, "max_best_fid_gap": args.max_gap},
        "wall_time_s": time.perf_counter() - start,
        "reused_runs": sum(r["reused"] for r in run_list),
        "jobs": args.jobs,
        "pairs": pairs,
        "by_setup": {
            s: aggregate([p for p in pairs if p["setup"] == s], [r for r in run_list if r["setup"] == s],
                         args.max_gap, args.min_saved)
            for s in args.setups
        },
        "overall": aggregate(pairs, run_list, args.max_gap, args.min_saved),
        "runs": run_list,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_stopping_study.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "early_stopping_study.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How many G steps does pruning save in a sweep, and does the pruned sweep still find the best trial?

The same 16-trial sweep of the 8-mode ring (conf/hparams_search/ring_lr_r1.yaml) runs through ``regan-train -m``
with a pruner and with ``pruner=none``. The sampler is random with the sampler seed, so both sweeps of a seed visit
the same configurations in the same order (the report checks this), and each trial trains with the same training
seed: a pruned trial is the unpruned one cut short, so feeding an unpruned sweep's FID histories through a pruner
(``replay``) gives that pruner's sweep without training.

1. **Choice, on the selection seeds** (``--selection-seeds``, default 0 1): their unpruned sweeps run, every pruner
   setting in :data:`CANDIDATES` (median, percentile, successive halving, Hyperband; startup trials, warm-up,
   reporting cadence, rungs) is replayed on them, and :data:`SELECTION_RULE` picks one.
2. **Test, on the held-out seeds** (``--heldout-seeds``, default 2 3), which the choice never reads: real sweeps
   with the chosen pruner and without; the targets are judged there.

Targets: G steps with pruning <= 40 % of without, and the same best trial (or its best FID within 5 %), for every
held-out seed.

Usage::

    nice -n 10 python studies/sweep_study.py --work /tmp/sweep_work  # the study (ring, 16 trials x 2+2 seeds)
    python studies/sweep_study.py --quick --selection-seeds 0 --heldout-seeds 1 --n-trials 4 --out /tmp/sweep_study

Writes ``<out>/sweep_study_fid.json`` and ``<out>/sweep_study_fid.md`` (default out: studies/results); each sweep keeps its
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


def run_sweep(sweep_dir: Path, seed: int, pruner_args: list[str], args: argparse.Namespace) -> float:
    """Run (or resume) one sweep with ``pruner_args`` (``pruner=...`` overrides); returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "lightning_regan.cli.train", *BASE, f"max_g_steps={args.max_g_steps}",
           *pruner_args, f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.n_trials={args.n_trials}",
           f"hydra.sweep.dir={sweep_dir}", *(QUICK if args.quick else [])]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    print("$", shlex.join(cmd), flush=True)
    start = time.monotonic()
    with open(sweep_dir.parent / f"{sweep_dir.name}.log", "a") as log_file:
        proc = subprocess.run(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=sweep_dir.parent)
    if proc.returncode != 0:
        raise SystemExit(f"sweep {sweep_dir} failed (exit {proc.returncode}); see {sweep_dir}.log")
    return time.monotonic() - start


def summarize(sweep_dir: Path) -> dict[str, Any]:
    """The figures of one sweep from its journal: G steps, pruned trials, best trial, trial time, one row per trial."""
    study = load_study(str(sweep_dir / "optuna.journal"))
    records = trial_records(study)
    best = best_record(study, records)
    return {
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


def compare(pruned: dict[str, Any], unpruned: dict[str, Any]) -> dict[str, Any]:
    """The figures of one seed from its two sweeps' summaries: G-step ratio, best trials and their FID gap."""
    out: dict[str, Any] = {"pruned": pruned, "unpruned": unpruned}
    p, u = pruned, unpruned
    out["same_configurations"] = [r["params"] for r in p["rows"]] == [r["params"] for r in u["rows"]]
    out["g_steps_ratio"] = p["g_steps"] / u["g_steps"]
    out["same_best_trial"] = p["best_trial"] == u["best_trial"]
    out["best_fid_gap"] = (p["best_fid"] / u["best_fid"] - 1.0) if p["best_fid"] and u["best_fid"] else None
    out["meets_targets"] = meets(out)
    return out


#: Pruner candidates, chosen among on the selection seeds: (label, conf/pruner option, its settings). Settings named
#: ``*_evals`` are in FID evaluations and become G steps (``every`` G steps per evaluation): a warm-up of 1 evaluation
#: is 100 G steps in the study (labels give G steps at the study's FID every 100 G steps). ``interval_steps`` is the reporting cadence the pruner acts on (every evaluation, or
#: every second one); the FID cadence itself stays the sweep's (changing it would change the trials).
CADENCE = {1: "checked at each FID", 2: "checked at every 2nd FID"}
Setting = tuple[str, str, dict[str, Any]]


def percentile_settings(percentiles: tuple[int, ...], startups: tuple[int, ...],
                        warmups: tuple[int, ...]) -> list[Setting]:
    """Percentile-pruner settings, checked at each and at every 2nd FID (warm-ups in evaluations)."""
    return [(f"{p}th percentile, {n} startup trials, warm-up {w * 100}, {CADENCE[i]}", "percentile",
             {"percentile": float(p), "n_startup_trials": n, "n_warmup_evals": w, "interval_evals": i})
            for p in percentiles for n in startups for w in warmups for i in (1, 2)]


def hyperband_settings(minimums: tuple[int, ...]) -> list[Setting]:
    """Hyperband settings with factors 2-4 (minimum resources in evaluations)."""
    return [(f"Hyperband, min {m * 100}, factor {rf}", "hyperband", {"min_resource_evals": m, "reduction_factor": rf})
            for m in minimums for rf in (2, 3, 4)]


CANDIDATES: list[Setting] = [
    *[(f"median, {n} startup trials, warm-up {w * 100}, {CADENCE[i]}", "median",
       {"n_startup_trials": n, "n_warmup_evals": w, "interval_evals": i})
      for n in (1, 2, 3, 4) for w in (1, 2, 3) for i in (1, 2)],
    *percentile_settings((10, 25), (2, 3, 4), (1, 2, 3)),
    *[(f"successive halving, first rung {m * 100}, factor {rf}", "successive_halving",
       {"min_resource_evals": m, "reduction_factor": rf}) for m in (1, 2, 3) for rf in (2, 3, 4)],
    *hyperband_settings((1, 2)),
]

#: A wider grid of Optuna's pruners, replayed after the study on every seed's unpruned sweep (``--survey``): is there
#: any setting that meets the targets on all seeds, whatever the choice would have picked?
SURVEY: list[Setting] = [
    *percentile_settings((5, 10, 25, 50), (2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6)),
    *[(f"successive halving, first rung {m * 100}, factor {rf}, early-stopping rate {e}", "successive_halving",
       {"min_resource_evals": m, "reduction_factor": rf, "min_early_stopping_rate": e})
      for m in (1, 2, 3, 4, 5) for rf in (2, 3, 4) for e in (0, 1, 2)],
    *hyperband_settings((1, 2, 3, 4, 5)),
]

#: The selection rule, fixed before the held-out sweeps ran (docs/studies/sweep_pruner.md).
SELECTION_RULE = ("among the candidates that meet both targets on every selection seed, the smallest worst-seed G-step "
                  "ratio; if none does, among those that keep the best trial (same trial or best FID within 5 %) on "
                  "every selection seed, the smallest worst-seed ratio; else the smallest worst-seed best-FID gap. "
                  "Ties: the smaller mean ratio, then the earlier candidate")


def pruner_overrides(option: str, settings: dict[str, Any], every: int) -> dict[str, Any]:
    """The ``pruner.*`` values of a candidate, ``*_evals`` settings turned into G steps (``every`` per evaluation)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key.endswith("_evals"):
            out[{"n_warmup_evals": "n_warmup_steps", "interval_evals": "interval_steps",
                 "min_resource_evals": "min_resource"}[key]] = int(value) * every
        else:
            out[key] = value
    return out


def make_pruner(option: str, overrides: dict[str, Any], max_g_steps: int, every: int) -> Any:
    """The Optuna pruner ``pruner=<option> pruner.<key>=<value> ...`` builds in a trial: conf/pruner/<option>.yaml
    with ``overrides`` merged in and its interpolations resolved against the sweep's settings."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "pruner" / f"{option}.yaml"), overrides)
    root = OmegaConf.create({"max_g_steps": max_g_steps, "callbacks": {"fid": {"every_n_g_steps": every}},
                             "pruner": node})
    return instantiate(root.pruner)


def replay(trials: list[Any], pruner: Any) -> dict[str, Any]:
    """Feed an unpruned sweep's finished trials (``FrozenTrial``s in trial order), their FID histories evaluation by
    evaluation, through ``pruner``: what OptunaPruning reports. A pruned trial's history is the unpruned one's prefix
    (deterministic runs), so this is the pruned sweep without training. Returns the G-step ratio, trials pruned and
    the best trial found."""
    import optuna

    # A fixed name: Hyperband assigns trials to brackets by a hash of the study name and trial number.
    study = optuna.create_study(study_name="replay", pruner=pruner)
    steps, kept, n_pruned, rows = 0, [], 0, []
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
            rows.append({"trial": t.number, "params": dict(t.params), "g_steps": int(t.user_attrs["g_steps"]),
                         "pruned_at": None, "best_fid": t.user_attrs.get("best_fid", t.value),
                         "status": t.user_attrs.get("status", "completed")})
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            steps += pruned_at
            n_pruned += 1
            rows.append({"trial": t.number, "params": dict(t.params), "g_steps": pruned_at, "pruned_at": pruned_at,
                         "best_fid": min(v for k, v in t.intermediate_values.items() if k <= pruned_at),
                         "status": "pruned"})
    best_all = min(trials, key=lambda t: t.value)
    best = min(kept, key=lambda t: t.value)
    return {"g_steps": steps, "g_steps_ratio": steps / sum(int(t.user_attrs["g_steps"]) for t in trials),
            "pruned_trials": n_pruned, "best_trial": best.number, "same_best_trial": best.number == best_all.number,
            "best_fid_gap": best.value / best_all.value - 1.0, "best_fid": best.user_attrs.get("best_fid", best.value),
            "best_params": dict(best.params), "rows": rows}


def unpruned_trials(sweep_dir: Path) -> list[Any]:
    """The finished trials of an unpruned sweep, in trial order."""
    return [t for t in load_study(str(sweep_dir / "optuna.journal")).trials if t.state.name == "COMPLETE"]


def meets(r: dict[str, Any]) -> bool:
    """Both targets on one seed: G steps <= 40 % of the unpruned sweep's, same best trial or best FID within 5 %."""
    return bool(r["g_steps_ratio"] <= 0.40 and keeps_best(r))


def keeps_best(r: dict[str, Any]) -> bool:
    return bool(r["same_best_trial"] or (r["best_fid_gap"] is not None and r["best_fid_gap"] <= 0.05))


def replay_candidates(sweeps: dict[str, list[Any]], max_g_steps: int, every: int,
                      candidates: list[Setting] = CANDIDATES) -> list[dict[str, Any]]:
    """Every candidate replayed on every unpruned sweep in ``sweeps`` (seed -> its finished trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for label, option, settings in candidates:
        overrides = pruner_overrides(option, settings, every)
        per_seed = {seed: replay(trials, make_pruner(option, overrides, max_g_steps, every))
                    for seed, trials in sweeps.items()}
        rows.append({"pruner": label, "option": option, "overrides": overrides, "seeds": per_seed,
                     "meets_targets": all(meets(r) for r in per_seed.values()),
                     "keeps_best": all(keeps_best(r) for r in per_seed.values()),
                     "worst_ratio": max(r["g_steps_ratio"] for r in per_seed.values()),
                     "mean_ratio": sum(r["g_steps_ratio"] for r in per_seed.values()) / len(per_seed),
                     "worst_gap": max(r["best_fid_gap"] for r in per_seed.values())})
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate :data:`SELECTION_RULE` picks from ``replay_candidates``' rows."""
    order = {id(r): i for i, r in enumerate(rows)}
    for tier in ([r for r in rows if r["meets_targets"]], [r for r in rows if r["keeps_best"]]):
        if tier:
            return min(tier, key=lambda r: (r["worst_ratio"], r["mean_ratio"], order[id(r)]))
    return min(rows, key=lambda r: (r["worst_gap"], r["mean_ratio"], order[id(r)]))


def slug(option: str, overrides: dict[str, Any]) -> str:
    """A sweep directory name for a pruner setting."""
    short = {"n_startup_trials": "n", "n_warmup_steps": "w", "interval_steps": "i", "percentile": "p",
             "min_resource": "m", "reduction_factor": "rf"}
    return option + "".join(f"_{short.get(k, k)}{v:g}" if isinstance(v, float) else f"_{short.get(k, k)}{v}"
                            for k, v in overrides.items())


def candidate_table(rows: list[dict[str, Any]], seeds: list[str], chosen: str) -> list[str]:
    """Markdown table of replayed pruner candidates: per seed the G-step ratio, best trial and best-FID gap."""
    lines = ["| pruner | " + " | ".join(f"seed {s}: G steps, best trial (gap)" for s in seeds) + " | targets |",
             "|---|" + "---|" * len(seeds) + "---|"]
    for row in rows:
        cells = [f"{row['seeds'][s]['g_steps_ratio']:.0%}, {row['seeds'][s]['best_trial']} "
                 f"({row['seeds'][s]['best_fid_gap']:+.0%})" for s in seeds]
        mark = "met" if row["meets_targets"] else ("best kept" if row["keeps_best"] else "")
        label = f"**{row['pruner']}**" if row["pruner"] == chosen else row["pruner"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mark} |")
    return lines


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep_study_fid.json").write_text(json.dumps(results, indent=1) + "\n")
    chosen, sel, held = results["chosen"], results["selection_seeds"], results["heldout_seeds"]
    lines = ["# Sweep pruning study", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']}; {results['date']}; wall time of this invocation "
             f"{results['wall_time_min']:.1f} min (sweeps already in --work are resumed, not rerun; the trial times "
             f"below are what the sweeps took).", "",
             f"Sweep: {results['sweep']}", "",
             f"Pruner chosen on the selection sampler seeds {', '.join(sel)} (their unpruned sweeps in "
             f"{results['selection_sweeps']}, replayed): "
             f"**{chosen['pruner']}** (`pruner={chosen['option']} "
             + " ".join(f"pruner.{k}={v}" for k, v in chosen["overrides"].items()) + "`). "
             f"Rule: {results['selection_rule']}.", "",
             f"Held-out sampler seeds {', '.join(held)} (never seen by the choice): their unpruned sweeps and "
             + ("real sweeps with the chosen pruner:" if all(r["pruned_sweep"] == "run" for r in results["seeds"].values())
                else "the chosen pruner replayed on them (--heldout-pruned replay; a pruned trial's FID history is the "
                     "unpruned one's prefix, so this is the pruned sweep without training it):"), "",
             "| sampler seed | trials | pruned | G steps pruned sweep | unpruned | ratio "
             "| best trial pruned / unpruned | best FID pruned / unpruned | gap | trial time pruned / unpruned | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, r in results["seeds"].items():
        p, u = r["pruned"], r["unpruned"]
        gap = "" if r["best_fid_gap"] is None else f"{r['best_fid_gap']:+.1%}"
        lines.append(f"| {seed} | {p['trials']} | {p['pruned_trials']} | {p['g_steps']:,} | {u['g_steps']:,} | "
                     f"{r['g_steps_ratio']:.0%} | {p['best_trial']} / {u['best_trial']} | "
                     f"{p['best_fid']:.4g} / {u['best_fid']:.4g} | {gap} | "
                     + (f"{p['trials_time_min']:.1f}" if p["trials_time_min"] is not None else "replayed")
                     + f" / {u['trials_time_min']:.1f} min | "
                     f"{'met' if r['meets_targets'] else 'NOT met'} |")
    lines += ["", f"Targets on the held-out seeds (G steps with pruning <= 40 % of without; same best trial or best "
                  f"FID within 5 %; every seed): **{'met' if results['meets_targets'] else 'NOT met'}**. Same "
                  f"configurations in both sweeps of a seed: "
                  f"{all(r['same_configurations'] for r in results['seeds'].values())}."
                  + ("" if any(r["pruned_sweep"] == "replay" for r in results["seeds"].values()) else
                     f" The chosen pruner replayed on each held-out unpruned sweep gives the real pruned sweep's G "
                     f"steps and best trial: {all(r['replay_agrees'] for r in results['seeds'].values())}."), ""]
    for seed, r in results["seeds"].items():
        lines += [f"## Held-out sampler seed {seed}: trials of the pruned sweep"
                  + (" (replayed;" if r["pruned_sweep"] == "replay" else " (") + " unpruned best FID beside)", "",
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
    lines += [f"## Candidates on the selection seeds {', '.join(sel)}", "",
              "Each selection seed's unpruned sweep, its FID histories fed trial by trial through the candidate (a "
              "pruned trial's history is the unpruned one's prefix): G steps against the unpruned sweep, and the best "
              "trial found (best-FID gap to the unpruned best). Sorted as the rule ranks them.", "",
              *candidate_table(results["candidates"], sel, chosen["pruner"]), ""]
    if results.get("heldout_candidates"):
        rows = results["heldout_candidates"]
        rank = next((i for i, r in enumerate(rows, 1) if r["pruner"] == chosen["pruner"]), None)
        ranked = (f"the chosen one ranks {rank} of {len(rows)} by the selection rule's order here." if rank else
                  f"the pruner given by --pruner ({chosen['pruner']}) is not among them.")
        lines += [f"## After the choice, for reference: the candidates on the held-out seeds {', '.join(held)}", "",
                  f"The same replay on the held-out seeds' unpruned sweeps (not read by the choice). "
                  f"{sum(r['meets_targets'] for r in rows)} of {len(rows)} candidates meet both targets on every "
                  f"held-out seed, {sum(r['keeps_best'] for r in rows)} keep the best trial on every held-out seed; "
                  f"{ranked}", "",
                  *candidate_table(rows, held, chosen["pruner"]), ""]
    (out_dir / "sweep_study_fid.md").write_text("\n".join(lines))


def survey(sweeps: dict[str, list[Any]], max_g_steps: int, every: int, out_dir: Path, command: str,
           settings: Optional[list[Setting]] = None) -> dict[str, Any]:
    """Replay ``settings`` (default :data:`SURVEY`) on every seed's unpruned sweep and write
    ``sweep_survey_<max_g_steps>.{json,md}``."""
    rows = replay_candidates(sweeps, max_g_steps, every, SURVEY if settings is None else settings)
    rows.sort(key=rank_key(rows))
    seeds = list(sweeps)
    result = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "max_g_steps": max_g_steps, "seeds": seeds, "settings": len(rows),
              "meet_targets": sum(r["meets_targets"] for r in rows), "keep_best": sum(r["keeps_best"] for r in rows),
              "rows": rows}
    kept = [r for r in rows if r["keeps_best"]]
    lines = [f"# Survey of Optuna's pruners on the study's unpruned sweeps ({max_g_steps} G steps per trial)", "",
             f"Command: `{command}`; {result['date']}. Every setting below replayed on the unpruned sweeps of sampler "
             f"seeds {', '.join(seeds)} (this is not a choice, it asks whether any setting could have met the "
             "targets).", "",
             f"{len(rows)} settings (percentile 5-50 with 2-6 startup trials, warm-up 100-600, checked at each or "
             f"every 2nd FID; successive halving with first rung 100-500, factor 2-4, early-stopping rate 0-2; "
             f"Hyperband with minimum 100-500, factor 2-4): **{result['meet_targets']}** meet both targets (G steps "
             f"<= 40 % of the unpruned sweep's, same best trial or best FID within 5 %) on every seed; "
             f"{result['keep_best']} keep the best trial on every seed"
             + (f", the fewest G steps among them {kept[0]['worst_ratio']:.0%} on the worst seed "
                f"({kept[0]['pruner']})." if kept else "."), "",
             "The 20 best by the selection rule's order:", "",
             *candidate_table(rows[:20], seeds, ""), ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"sweep_survey_{max_g_steps}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"sweep_survey_{max_g_steps}.md").write_text("\n".join(lines))
    return result


def rank_key(rows: list[dict[str, Any]]) -> Any:
    """Sort key of the candidate table: the selection rule's order (tier, worst ratio, mean ratio, list order)."""
    order = {id(r): i for i, r in enumerate(rows)}
    return lambda r: (0 if r["meets_targets"] else 1 if r["keeps_best"] else 2,
                      r["worst_ratio"] if r["keeps_best"] else r["worst_gap"], r["mean_ratio"], order[id(r)])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection-seeds", type=int, nargs="+", default=[0, 1],
                        help="sampler seeds whose unpruned sweeps choose the pruner")
    parser.add_argument("--heldout-seeds", type=int, nargs="*", default=[2, 3],
                        help="sampler seeds the targets are reported on (never seen by the choice)")
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--max-g-steps", type=int, default=1000)
    parser.add_argument("--pruner", default="auto",
                        help="'auto' (choose among CANDIDATES on the selection seeds) or a conf/pruner/ option as is")
    parser.add_argument("--heldout-pruned", choices=("run", "replay"), default="run",
                        help="held-out pruned sweeps: run them, or replay the chosen pruner on the unpruned ones")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "studies" / "results")
    parser.add_argument("--work", type=Path, default=None, help="sweep directories (reused: resumes)")
    parser.add_argument("--selection-work", type=Path, default=None,
                        help="folder of the selection seeds' unpruned sweeps, when not --work (e.g. an earlier run's)")
    parser.add_argument("--survey", action="store_true",
                        help="only replay the wider SURVEY grid on the finished unpruned sweeps of all seeds "
                             "(selection seeds in --selection-work or --work, held-out seeds in --work)")
    args = parser.parse_args(argv)
    if not args.heldout_seeds and not args.survey:
        parser.error("--heldout-seeds: the study needs at least one (only --survey runs without)")
    if set(args.selection_seeds) & set(args.heldout_seeds):
        parser.error("--selection-seeds and --heldout-seeds must not share a seed")
    if args.quick and "--max-g-steps" not in (argv if argv is not None else sys.argv):
        args.max_g_steps = 40
    every = 10 if args.quick else 100  # G steps per FID evaluation (QUICK sets callbacks.fid.every_n_g_steps=10)
    if args.survey:
        if args.work is None:
            parser.error("--survey reads finished sweeps: give --work (and --selection-work if elsewhere)")
        folders = {**{s: args.selection_work or args.work for s in args.selection_seeds},
                   **{s: args.work for s in args.heldout_seeds}}
        missing = [str(f / f"seed{s}_none") for s, f in folders.items() if not (f / f"seed{s}_none").is_dir()]
        if missing:
            parser.error(f"--survey: no unpruned sweep in {', '.join(missing)}")
        sweeps = {str(s): unpruned_trials(f / f"seed{s}_none") for s, f in folders.items()}
        survey(sweeps, args.max_g_steps, every, args.out,
               "python studies/sweep_study.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
        print((args.out / f"sweep_survey_{args.max_g_steps}.md").read_text())
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep_study_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def sweep(seed: int, name: str, pruner_args: list[str], folder: Optional[Path] = None) -> Path:
        sweep_dir = (folder or work) / f"seed{seed}_{name}"
        wall = run_sweep(sweep_dir, seed, pruner_args, args)
        print(f"seed {seed}, {name}: {wall / 60:.1f} min", flush=True)
        return sweep_dir

    # 1. The choice: candidates replayed on the selection seeds' unpruned sweeps (no held-out sweep is read here).
    selection = {str(s): unpruned_trials(sweep(s, "none", ["pruner=none"], args.selection_work))
                 for s in args.selection_seeds}
    candidates = replay_candidates(selection, args.max_g_steps, every)
    if args.pruner == "auto":
        chosen = choose(candidates)
    else:
        chosen = {"pruner": args.pruner, "option": args.pruner, "overrides": {}}
    candidates.sort(key=rank_key(candidates))
    pruner_args = [f"pruner={chosen['option']}", *(f"pruner.{k}={v}" for k, v in chosen["overrides"].items())]
    name = slug(chosen["option"], chosen["overrides"])
    print(f"chosen: {chosen['pruner']} ({' '.join(pruner_args)})", flush=True)

    # 2. The held-out seeds: real sweeps with the chosen pruner and without.
    seeds: dict[str, Any] = {}
    for seed in args.heldout_seeds:
        full_dir = sweep(seed, "none", ["pruner=none"])
        check = replay(unpruned_trials(full_dir),
                       make_pruner(chosen["option"], chosen["overrides"], args.max_g_steps, every))
        check["trials"] = len(check["rows"])
        if args.heldout_pruned == "run":
            r = compare(summarize(sweep(seed, name, pruner_args)), summarize(full_dir))
        else:  # the chosen pruner replayed on the unpruned sweep stands for the pruned sweep (no trial time)
            r = compare({**check, "trials_time_min": None}, summarize(full_dir))
        r["pruned_sweep"] = args.heldout_pruned
        r["replay"] = {k: v for k, v in check.items() if k != "rows"}
        r["replay_agrees"] = (check["g_steps"] == r["pruned"]["g_steps"]
                              and check["best_trial"] == r["pruned"]["best_trial"])
        seeds[str(seed)] = r
    results = {
        "command": "python studies/sweep_study.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), Python "
                   f"{platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_min": (time.monotonic() - start) / 60,
        "sweep": (f"`regan-train -m {' '.join(BASE)} max_g_steps={args.max_g_steps} pruner=...|none "
                  f"hydra.sweeper.sampler.seed=<seed>`: {args.n_trials} trials of the 8-mode ring (MLP GAN, R1, EMA "
                  f"of G), random sampler over log-uniform D and G learning rates in [1e-4, 5e-3] and R1 weight in "
                  f"[0.01, 10]; FID on the 2-D points themselves (identity features) every {every} G steps; trials "
                  f"run one after the other (basic launcher)." + (" QUICK smoke-test budgets." if args.quick else "")),
        "selection_seeds": [str(s) for s in args.selection_seeds],
        "selection_sweeps": str(args.selection_work or work),
        "heldout_seeds": [str(s) for s in args.heldout_seeds],
        "selection_rule": SELECTION_RULE if args.pruner == "auto" else f"none (--pruner {args.pruner})",
        "chosen": {k: chosen[k] for k in ("pruner", "option", "overrides")},
        "seeds": seeds,
        "meets_targets": all(r["meets_targets"] for r in seeds.values()),
        "candidates": candidates,
    }
    # 3. After the choice, for reference only: every candidate on the held-out seeds (how the choice ranks there).
    heldout = replay_candidates({str(s): unpruned_trials(work / f"seed{s}_none") for s in args.heldout_seeds},
                                args.max_g_steps, every)
    heldout.sort(key=rank_key(heldout))
    results["heldout_candidates"] = heldout
    write_report(results, args.out)
    print((args.out / "sweep_study_fid.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

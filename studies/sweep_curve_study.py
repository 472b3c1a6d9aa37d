#!/usr/bin/env python
"""The learning-curve pruner (``pruner=curve``) replayed on the ring sweep study's committed records.

``studies/sweep_study.py`` trained the 16-trial ring sweep (``hparams_search=ring_lr_r1``, 1,000 G steps, FID every
100 G steps) without pruning for sampler seeds 0-3 and replayed Optuna's pruners on the FID histories, but its
journals were in temporary folders: the committed results (``studies/results/sweep_study_fid.json`` and
``sweep_survey_1000.json``) keep, per replayed pruner setting, each trial's row (``pruned_at`` and its best FID up
to there) and each unpruned trial's best FID at G step 1,000. Across the 375 settings replayed there, those rows give
each trial's *best FID so far* at most of its evaluations (:func:`reconstruct`). This script replays pruners on those
reconstructed curves, exactly as the sweep study does on journals (:func:`sweep_study.replay`, trial by trial in
trial order, the pruner built from ``conf/pruner/``):

1. **Check**: every Optuna pruner setting of the committed study and survey is replayed on the reconstruction; the
   share whose G steps and best trial match the committed replay on every seed says how faithful it is (Optuna's
   percentile-type pruners read the best value so far, which is what the reconstruction holds).
2. **Choice** among :data:`CANDIDATES` (``pruner=curve`` settings) on the selection seeds 0 and 1 with the sweep
   study's rule (:data:`sweep_study.SELECTION_RULE`), **test** on the held-out seeds 2 and 3.

The metric is the study's: FID on the 2-D points (identity features), best value so far; the grading is its best
FID at G step 1,000 (no 10,000-sample ground truth exists in these records).

Usage::

    python studies/sweep_curve_study.py            # writes studies/results/sweep_curve_study.{json,md}
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import sweep_study  # noqa: E402

RESULTS = REPO / "studies" / "results"
SOURCES = ("sweep_study_fid.json", "sweep_survey_1000.json")
MAX_G_STEPS, EVERY = 1000, 100

#: ``pruner=curve`` settings chosen among on the selection seeds: (label, option, settings). Trend's own ``z`` and
#: ``window`` come first, so that they win ties.
CANDIDATES: list[sweep_study.Setting] = [
    (f"curve, from {share:.0%} of the budget, z {z:g}, tolerance {tol:+g}, window {window:g}", "curve",
     {"min_budget_share": share, "z": z, "tolerance": tol, "window": window, "min_evaluations": 3})
    for share in (0.2, 0.3, 0.4, 0.5) for z in (2.0, 1.0, 3.0) for tol in (0.0, -1.0, -4.0, -9.0, -19.0)
    for window in (0.5, 0.25)
]


def setting_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The replayed settings' rows of a committed study or survey JSON (each with ``seeds``)."""
    rows = list(payload.get("rows") or [])
    rows += list(payload.get("candidates") or []) + list(payload.get("heldout_candidates") or [])
    return rows


def reconstruct(payloads: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Each seed's trials from the committed rows: ``{seed: {trial: {"params", "curve": {G step: best FID so far},
    "best_fid"}}}``. A pruned row gives the best FID up to its ``pruned_at``; a completed row the best at the end."""
    trials: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for payload in payloads:
        for row in setting_rows(payload):
            for seed, result in row["seeds"].items():
                for r in result["rows"]:
                    t = trials[seed].setdefault(r["trial"], {"params": r["params"], "curve": {}, "best_fid": None})
                    step = r["pruned_at"] if r["pruned_at"] is not None else int(r["g_steps"])
                    t["curve"][int(step)] = float(r["best_fid"])
                    if r["pruned_at"] is None:
                        t["best_fid"] = float(r["best_fid"])
    return {s: dict(sorted(ts.items())) for s, ts in sorted(trials.items())}


def frozen_trials(trials: dict[int, dict[str, Any]]) -> list[Any]:
    """The reconstructed trials as the ``FrozenTrial``s :func:`sweep_study.replay` reads (in trial order)."""
    import optuna

    out = []
    for number, t in trials.items():
        frozen = optuna.trial.create_trial(value=t["best_fid"], params={}, distributions={},
                                           intermediate_values=dict(sorted(t["curve"].items())),
                                           user_attrs={"g_steps": MAX_G_STEPS, "best_fid": t["best_fid"]})
        frozen.number = number
        frozen.params = dict(t["params"])  # replay copies them into its rows
        out.append(frozen)
    return out


def fidelity(payloads: list[dict[str, Any]], sweeps: dict[str, list[Any]]) -> dict[str, Any]:
    """Replay every committed Optuna setting on the reconstruction: how many reproduce the committed G steps and best
    trial on every seed they were replayed on."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen, total, exact, mismatches, pairs, pair_exact, same_best, diffs = set(), 0, 0, [], 0, 0, 0, []
    for payload in payloads:
        for row in setting_rows(payload):
            key = (row["option"], json.dumps(row["overrides"], sort_keys=True), tuple(sorted(row["seeds"])))
            if key in seen:
                continue
            seen.add(key)
            total += 1
            ok = True
            for seed, committed in row["seeds"].items():
                got = sweep_study.replay(sweeps[seed], sweep_study.make_pruner(row["option"], row["overrides"],
                                                                               MAX_G_STEPS, EVERY))
                match = got["g_steps"] == committed["g_steps"] and got["best_trial"] == committed["best_trial"]
                ok &= match
                pairs += 1
                pair_exact += match
                same_best += got["best_trial"] == committed["best_trial"]
                diffs.append(abs(got["g_steps_ratio"] - committed["g_steps_ratio"]))
            exact += ok
            if not ok and len(mismatches) < 5:
                mismatches.append(row["pruner"])
    return {"settings": total, "reproduced": exact, "share": exact / total, "first_mismatches": mismatches,
            "setting_seeds": pairs, "setting_seeds_reproduced": pair_exact, "setting_seeds_same_best": same_best,
            "mean_abs_ratio_difference": sum(diffs) / len(diffs), "max_abs_ratio_difference": max(diffs)}


def coverage(trials: dict[str, dict[int, dict[str, Any]]]) -> dict[str, float]:
    """Share of the 10 evaluations per trial the reconstruction holds, per seed."""
    return {seed: sum(len(t["curve"]) for t in ts.values()) / (10 * len(ts)) for seed, ts in trials.items()}


def without_rows(row: dict[str, Any]) -> dict[str, Any]:
    """A candidate's result without its per-trial rows (the file stays small; the table needs the summaries)."""
    return {**row, "seeds": {s: {k: v for k, v in r.items() if k != "rows"} for s, r in row["seeds"].items()}}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection-seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--heldout-seeds", nargs="+", default=["2", "3"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    payloads = [json.loads((RESULTS / name).read_text()) for name in SOURCES]
    trials = reconstruct(payloads)
    sweeps = {seed: frozen_trials(ts) for seed, ts in trials.items()}
    check = fidelity(payloads, sweeps)

    selection = {s: sweeps[s] for s in args.selection_seeds}
    heldout = {s: sweeps[s] for s in args.heldout_seeds}
    rows = sweep_study.replay_candidates(selection, MAX_G_STEPS, EVERY, CANDIDATES)
    chosen = sweep_study.choose(rows)
    rows.sort(key=sweep_study.rank_key(rows))
    pruner = sweep_study.make_pruner(chosen["option"], chosen["overrides"], MAX_G_STEPS, EVERY)
    tested = {s: sweep_study.replay(ts, pruner) for s, ts in heldout.items()}
    for r in tested.values():
        r["meets_targets"] = sweep_study.meets(r)
    after = sweep_study.replay_candidates(heldout, MAX_G_STEPS, EVERY, CANDIDATES)
    after.sort(key=sweep_study.rank_key(after))
    # The committed choice of Optuna's pruners on the same reconstruction, for comparison.
    committed = json.loads((RESULTS / "sweep_study_fid.json").read_text())["chosen"]
    percentile = {s: sweep_study.replay(ts, sweep_study.make_pruner(committed["option"], committed["overrides"],
                                                                    MAX_G_STEPS, EVERY)) for s, ts in heldout.items()}
    results = {
        "command": ("python studies/sweep_curve_study.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [f"studies/results/{n}" for n in SOURCES],
        "metric": "best FID so far on the 2-D points (identity features), every 100 G steps; graded by best FID",
        "coverage": coverage(trials),
        "fidelity": check,
        "selection_seeds": args.selection_seeds, "heldout_seeds": args.heldout_seeds,
        "selection_rule": sweep_study.SELECTION_RULE,
        "chosen": {k: chosen[k] for k in ("pruner", "option", "overrides")},
        "seeds": tested,
        "meets_targets": all(r["meets_targets"] for r in tested.values()),
        "percentile_on_reconstruction": {s: {k: r[k] for k in ("g_steps_ratio", "best_trial", "same_best_trial",
                                                               "best_fid_gap")} for s, r in percentile.items()},
        "candidates": [without_rows(r) for r in rows],
        "heldout_candidates": [without_rows(r) for r in after],
        "trials": {s: {str(n): {"params": t["params"], "curve": {str(k): v for k, v in t["curve"].items()},
                                "best_fid": t["best_fid"]} for n, t in ts.items()} for s, ts in trials.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_curve_study.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, args.out / "sweep_curve_study.md")
    print((args.out / "sweep_curve_study.md").read_text())
    return 0


def write_report(results: dict[str, Any], path: Path) -> None:
    sel, held, chosen = results["selection_seeds"], results["heldout_seeds"], results["chosen"]
    f = results["fidelity"]
    lines = [
        "# The learning-curve pruner on the ring sweep study's records", "",
        f"Command: `{results['command']}`; {results['date']}. Sources: {', '.join(results['sources'])}. Metric: "
        f"{results['metric']}.", "",
        f"Reconstruction: {', '.join(f'seed {s} {c:.0%}' for s, c in results['coverage'].items())} of the "
        f"evaluations; {f['reproduced']} of {f['settings']} committed Optuna settings replayed on it give the "
        f"committed G steps and best trial on every seed ({f['share']:.0%}); per seed, "
        f"{f['setting_seeds_reproduced']} of {f['setting_seeds']} reproduce both, "
        f"{f['setting_seeds_same_best']} the best trial, and the G-step share differs by "
        f"{f['mean_abs_ratio_difference']:.1%} on average (at most {f['max_abs_ratio_difference']:.0%}). Optuna's "
        "median and percentile pruners compare the other trials' raw values at the same step, which the "
        "reconstruction lacks where a trial's FID rose again or an evaluation is missing.", "",
        f"Chosen on the selection seeds {', '.join(sel)}: **{chosen['pruner']}** (`pruner=curve "
        + " ".join(f"pruner.{k}={v}" for k, v in chosen["overrides"].items()) + "`).", "",
        "| held-out seed | pruned | G steps ratio | best trial pruned / unpruned | gap | targets | "
        "percentile (committed): ratio, best kept |",
        "|---|---|---|---|---|---|---|"]
    for seed, r in results["seeds"].items():
        p = results["percentile_on_reconstruction"][seed]
        unpruned_best = r["best_trial"] if r["same_best_trial"] else "other"
        lines.append(f"| {seed} | {r['pruned_trials']} | {r['g_steps_ratio']:.0%} | {r['best_trial']} / "
                     f"{unpruned_best} | {r['best_fid_gap']:+.1%} | {'met' if r['meets_targets'] else 'NOT met'} | "
                     f"{p['g_steps_ratio']:.0%}, {'yes' if sweep_study.keeps_best(p) else 'no'} |")
    lines += ["", f"Targets on every held-out seed: **{'met' if results['meets_targets'] else 'NOT met'}**.", "",
              f"## Candidates on the selection seeds {', '.join(sel)}", "",
              *sweep_study.candidate_table(results["candidates"], sel, chosen["pruner"]), "",
              f"## After the choice, for reference: the candidates on the held-out seeds {', '.join(held)}", "",
              *sweep_study.candidate_table(results["heldout_candidates"], held, chosen["pruner"]), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Sweep pruners on the stop metric (``val/mmd``), graded on ground truth: the ring and digits sweeps (issue 32).

Design (each trial trained once; every pruner replayed on the recordings):

1. **Recording.** A family is a sweep: a search space in ``conf/hparams_search/`` and fixed overrides. With Optuna's
   ``RandomSampler`` seeded by the sampler seed, a trial's parameters do not depend on the results of earlier trials,
   so the study asks the sampler for the same parameters the ``regan_optuna`` sweeper asks for (same search space,
   same order, :func:`trial_params`) and trains each trial once to its full budget (the sweep's training seed 0, no
   early termination), recording at every evaluation what the sweep reports (``val/mmd``) and the ground truth
   (:func:`stopping_study.train_one`'s recorder: points, MMD² of 10,000 generated points against 10,000 fresh real
   points; images, classifier-feature FID of 10,000 generated images against all 1,797 digits). Finished trials are
   cached on disk (``--work``), so the study resumes.
2. **Replay.** Trials of a sweep run one after the other (``n_jobs=1``), so a pruned sweep is the unpruned sweep with
   each trial cut where the pruner says (training is identical up to there). :func:`replay` feeds the trials in
   trial order through the pruner, live, through an Optuna study (``report`` / ``should_prune`` / ``tell``, as
   ``OptunaPruning`` and the sweeper do): a trial's incumbent is what the earlier trials reported. The sweep's pick
   is the completed trial with the best ``best_value`` (its best ``val/mmd``); its generator is the one of that best
   evaluation (``best.ckpt``), graded by the truth there.
3. **Grading.** Per sweep: the share of the unpruned sweep's G steps the pruned one runs (target <= 40 %), and
   whether its pick is the unpruned sweep's pick or within 5 % of its truth (widened to the grader's real-vs-real
   noise where that is larger; target: every held-out seed).
4. **Choice** of the ``pruner=curve`` setting (and, for comparison, of an Optuna pruner setting) on the selection
   seeds of both families with ``sweep_study``'s rule; the figures are reported on the held-out seeds. The shipped
   ``conf/pruner/`` defaults are replayed as they are too. The pruners are imported live, so
   ``python studies/sweep_truth_study.py --replay`` re-grades the committed recordings in seconds with whatever stop
   rule ``Trend`` (whose projection ``CurvePruner`` uses) is current.
5. **Confirmation** (``--confirm FAMILY/SEED ...``): real pruned sweeps through ``regan-train -m`` (the regan_optuna
   sweeper) with the chosen setting (``--confirm-with curve|optuna``); their parameters, per-trial prune steps and
   reported values are compared with the replay's.

Sizes (2-core machine shared by three; the study was allowed one core, ``nice``, for about 90 minutes): with the
point truth's real side drawn once and only the handed-over evaluation scored (:class:`_DeferredTruth`), a ring trial
(1,000 G steps, ``val/mmd`` on 2,000 samples every 100) took 15-30 s and a digits trial (800 G steps, every 100, the
truth at every evaluation) 8-15 s (medians in the JSON's ``timing``). That affords the issue's 16-trial ring sweeps
(the size of the first sweep study) for the 6 sampler seeds the issue names (selection 0-1, held-out 2-5), about
30 minutes, and 12-trial digits sweeps for 6 seeds (selection 0-1, held-out 2-5), about 11 minutes, plus three real
pruned sweeps for the confirmation (about 5 minutes). The first sizes (8 trials a sweep) were set before the cost
was known.

Usage::

    nice -n 10 python studies/sweep_truth_study.py --work /tmp/i32s/work          # record (resumes) and analyse
    python studies/sweep_truth_study.py --quick --work /tmp/i32s/quick --out /tmp/i32s/quick_out   # smoke test
    python studies/sweep_truth_study.py --replay                                    # re-analyse committed records
    python studies/sweep_truth_study.py --confirm ring/2 digits/2 --work /tmp/i32s/work   # real pruned sweeps

Writes ``<out>/sweep_study.json`` (every trial's recording and every replay) and ``<out>/sweep_study.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "studies")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import stopping_study  # noqa: E402
import sweep_study  # noqa: E402

RESULTS = REPO / "studies" / "results"
METRIC = "val/mmd"
EPSILON = 0.05
TARGET_SHARE = 0.40


@dataclass(frozen=True)
class Family:
    """One sweep: its search space (``conf/hparams_search/<hparams>.yaml``), fixed overrides and sizes."""

    hparams: str
    description: str
    overrides: tuple[str, ...]
    max_g_steps: int
    every: int
    n_trials: int
    selection: tuple[int, ...]
    heldout: tuple[int, ...]
    points: bool = False
    quick: tuple[str, ...] = field(default=())


FAMILIES: dict[str, Family] = {
    "ring": Family("ring_lr_r1", "the 8-mode ring (`experiment=ring`: MLP GAN, R1, EMA of G), D and G learning rates "
                   "log-uniform in [1e-4, 5e-3] x R1 weight in [0.01, 10]",
                   ("experiment=ring",), 1000, 100, 16, (0, 1), (2, 3, 4, 5), points=True,
                   quick=("data.n_samples=2048", "model.generator.hidden=[32,32]", "model.discriminator.hidden=[32,32]")),
    "digits": Family("digits_lr_r1", "sklearn's 8x8 digits (DCGAN width 16), D and G learning rates log-uniform in "
                     "[5e-5, 2e-3] x R1 weight in [0.01, 10]",
                     ("data=digits", "model=dcgan", "model.generator.channels=16", "model.discriminator.channels=16"),
                     800, 100, 12, (0, 1), (2, 3, 4, 5)),
}
TRAINING_SEED = 0  # the sweep's trials all train with the root config's seed


# ---------------------------------------------------------------------------------------------- the sweep's trials
def search_space(hparams: str) -> dict[str, Any]:
    """The Optuna distributions of ``conf/hparams_search/<hparams>.yaml``, built as the regan_optuna sweeper does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from hydra_plugins.regan_optuna_sweeper.sweeper import split_search_space

    params = OmegaConf.load(REPO / "conf" / "hparams_search" / f"{hparams}.yaml").hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return split_search_space(parsed)[0]


def trial_params(hparams: str, sampler_seed: int, n_trials: int) -> list[dict[str, Any]]:
    """The parameters of the sweep's trials 0..n_trials-1 under ``RandomSampler(seed=sampler_seed)``: they do not
    depend on the trials' results, so this is what ``regan-train -m hparams_search=<hparams>`` asks for."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(hparams)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed))
    return [dict(study.ask(space).params) for _ in range(n_trials)]


def param_overrides(params: dict[str, Any]) -> list[str]:
    from hydra_plugins.regan_optuna_sweeper.sweeper import _override_value

    return [f"{k}={_override_value(v)}" for k, v in params.items()]


def trial_spec(name: str, fam: Family, sampler_seed: int, number: int, params: dict[str, Any], work: Path,
               quick: bool) -> dict[str, Any]:
    budget, every = (40, 10) if quick else (fam.max_g_steps, fam.every)
    return {"setup": f"{name}-s{sampler_seed}-t{number}", "family": name, "sampler_seed": sampler_seed,
            "trial": number, "params": params, "overrides": [*fam.overrides, *(fam.quick if quick else ()),
                                                              *param_overrides(params)],
            "points": fam.points, "seed": TRAINING_SEED, "run_dir": str(work / name / f"s{sampler_seed}" / f"t{number}"),
            "max_g_steps": budget, "every": every, "truth_samples": 300 if quick else stopping_study.TRUTH_SAMPLES,
            **({"quick": True} if quick else {})}


def record_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one trial to its budget with the stopping study's recorder (cached in ``run_dir/record.json``)."""
    path = Path(spec["run_dir"], "record.json")
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("spec") == spec:
            return saved
    stopping_study.SETUPS[spec["setup"]] = stopping_study.Setup(
        "healthy", spec["family"], tuple(spec["overrides"]), spec["max_g_steps"], spec["every"], points=spec["points"])
    start = time.perf_counter()
    deferred = _DeferredTruth() if spec["points"] else None
    if deferred is not None:
        stopping_study._truth_reference, original = deferred.wrap(stopping_study._truth_reference), \
            stopping_study._truth_reference
    try:
        run = stopping_study.train_one(spec)
    finally:
        if deferred is not None:
            stopping_study._truth_reference = original
    evaluations = [{"g_step": e["g_step"], "value": e["metrics"].get(METRIC), "truth": e["truth"],
                    **({"modes": e["modes"]} if "modes" in e else {})} for e in run["evaluations"]]
    truth_s = run["recorder_s"]
    if deferred is not None:
        truth_s += deferred.fill(evaluations, Path(spec["run_dir"]))
    record = {"spec": spec, "wall_s": time.perf_counter() - start, "g_steps": run["g_steps"],
              "fit_wall_s": run["fit_wall_s"], "truth_s": truth_s, "grader_noise": run["grader_noise"],
              "grader_noise_note": run["grader_noise_note"], "evaluations": evaluations}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return record


_REFERENCES: dict[Any, dict[str, Any]] = {}


class _DeferredTruth:
    """The stopping study's point truth (MMD² of 10,000 generated points against 10,000 fresh real points, about 9 s
    an evaluation here), computed only where the grading reads it: the recorder's points are kept (``fakes.pt``) and
    scored afterwards at the evaluation a completed trial hands over (its best ``val/mmd``), the only one the grading
    reads (a sweep's pick is a completed trial); the others stay ``None`` (``fakes.pt`` keeps their points)."""

    def __init__(self) -> None:
        self.reference: Any = None
        self.fakes: list[Any] = []

    def wrap(self, truth_reference: Any) -> Any:
        def wrapped(setup: Any, datamodule: Any, extractor: Any, seed: int, n: int) -> dict[str, Any]:
            # The real side and its noise depend on the data and the seed only: the same for every trial (the
            # sweep's trials share training seed 0), so they are drawn once per process.
            key = (tuple(datamodule.centers.flatten().tolist()), float(datamodule.std), seed, n)
            if key not in _REFERENCES:
                _REFERENCES[key] = truth_reference(setup, datamodule, extractor, seed, n)
            ref = _REFERENCES[key]
            self.reference = ref["rbf"]
            return {**ref, "rbf": self}
        return wrapped

    def mmd2(self, fake: Any) -> float:
        self.fakes.append(fake.detach().clone())
        return float("nan")

    def fill(self, evaluations: list[dict[str, Any]], run_dir: Path) -> float:
        """Score the needed evaluations; returns the seconds it took."""
        import torch

        start = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.stack(self.fakes), run_dir / "fakes.pt")
        for e in evaluations:
            e["truth"] = None
        best = handed_over(evaluations)
        if best is not None:
            best["truth"] = float(self.reference.mmd2(self.fakes[evaluations.index(best)]))
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- replay and grading
def handed_over(evaluations: list[dict[str, Any]], until: Optional[int] = None) -> Optional[dict[str, Any]]:
    """The evaluation whose generator a run up to G step ``until`` hands over: its best reported value (first on
    ties), ``None`` when it reported no finite value."""
    best = None
    for e in evaluations:
        if until is not None and e["g_step"] > until:
            break
        v = e["value"]
        if v is not None and v == v and abs(v) != float("inf") and (best is None or v < best["value"]):
            best = e
    return best


def replay(trials: list[dict[str, Any]], pruner: Any, budget: int) -> list[dict[str, Any]]:
    """The pruned sweep of ``trials`` (recordings in trial order; each ``{"trial", "evaluations"}``): each trial's
    values reported evaluation by evaluation through ``pruner`` in an Optuna study, as ``OptunaPruning`` does; the
    incumbent of a trial is therefore what the earlier trials reported. Returns per trial ``g_steps`` run,
    ``pruned_at`` (or ``None``) and ``value`` (its best reported value up to there)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="replay", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    rows = []
    for t in trials:
        trial = study.ask()
        trial.set_user_attr("max_g_steps", budget)
        pruned_at = None
        for e in t["evaluations"]:
            v = e["value"]
            if v is None or v != v:
                continue
            trial.report(float(v), int(e["g_step"]))
            if trial.should_prune():
                pruned_at = int(e["g_step"])
                break
        best = handed_over(t["evaluations"], pruned_at)
        if pruned_at is None:
            study.tell(trial, best["value"] if best else float("nan"),
                       state=None if best else optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        rows.append({"trial": t["trial"], "g_steps": pruned_at if pruned_at is not None else budget,
                     "pruned_at": pruned_at, "value": None if best is None else best["value"]})
    return rows


def pick(trials: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The sweep's pick (the completed trial with the best value) and the truth of its handed-over generator."""
    done = [(r, t) for r, t in zip(rows, trials) if r["pruned_at"] is None and r["value"] is not None]
    if not done:
        return None
    r, t = min(done, key=lambda rt: rt[0]["value"])
    return {"trial": r["trial"], "value": r["value"], "truth": handed_over(t["evaluations"])["truth"]}


def unpruned_rows(trials: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The rows of the unpruned sweep: every trial runs its budget."""
    return [{"trial": t["trial"], "g_steps": budget, "pruned_at": None,
             "value": (handed_over(t["evaluations"]) or {}).get("value")} for t in trials]


def grade(trials: list[dict[str, Any]], rows: list[dict[str, Any]], budget: int, noise: float) -> dict[str, Any]:
    """One pruned sweep against its unpruned sweep: G-step share, picks, the truth gap and whether the pick is kept
    (same trial, or truth within max(5 % of the unpruned pick's truth, the grader's noise))."""
    full = pick(trials, unpruned_rows(trials, budget))
    got = pick(trials, rows)
    share = sum(r["g_steps"] for r in rows) / (budget * len(trials))
    out = {"g_steps": sum(r["g_steps"] for r in rows), "g_steps_unpruned": budget * len(trials),
           "g_steps_ratio": share, "pruned_trials": sum(r["pruned_at"] is not None for r in rows),
           "best_trial": None if got is None else got["trial"], "unpruned_best_trial": full["trial"],
           "best_truth": None if got is None else got["truth"], "unpruned_best_truth": full["truth"],
           "pruned_at": {str(r["trial"]): r["pruned_at"] for r in rows}}
    out["same_best_trial"] = got is not None and got["trial"] == full["trial"]
    out["truth_gap"] = None if got is None else (got["truth"] - full["truth"]) / abs(full["truth"])
    out["keeps_best"] = bool(out["same_best_trial"] or (
        got is not None and got["truth"] <= full["truth"] + max(EPSILON * abs(full["truth"]), noise)))
    out["meets_targets"] = bool(out["keeps_best"] and share <= TARGET_SHARE)
    # sweep_study's ranking reads best_fid_gap; here it is the truth gap
    out["best_fid_gap"] = out["truth_gap"] if out["truth_gap"] is not None else float("inf")
    return out


def replay_setting(sweeps: dict[str, dict[str, Any]], label: str, option: str,
                   overrides: dict[str, Any]) -> dict[str, Any]:
    """One pruner setting replayed on every sweep in ``sweeps`` (key ``family/seed``), with the summary keys
    ``sweep_study.choose`` and ``sweep_study.rank_key`` read."""
    per = {}
    for key, sweep in sweeps.items():
        pruner = sweep_study.make_pruner(option, overrides, sweep["budget"], sweep["every"])
        per[key] = grade(sweep["trials"], replay(sweep["trials"], pruner, sweep["budget"]), sweep["budget"],
                         sweep["noise"])
    return {"pruner": label, "option": option, "overrides": overrides, "seeds": per,
            "meets_targets": all(r["meets_targets"] for r in per.values()),
            "keeps_best": all(r["keeps_best"] for r in per.values()),
            "worst_ratio": max(r["g_steps_ratio"] for r in per.values()),
            "mean_ratio": sum(r["g_steps_ratio"] for r in per.values()) / len(per),
            "worst_gap": max(r["best_fid_gap"] for r in per.values())}


#: ``pruner=curve`` settings chosen among; the shipped default first (it wins ties).
CURVE_CANDIDATES: list[sweep_study.Setting] = [
    (f"curve, from {share:.0%} of the budget, z {z:g}, tolerance {tol:+g}, window {window:g}", "curve",
     {"min_budget_share": share, "z": z, "tolerance": tol, "window": window, "min_evaluations": 3})
    for share in (0.5, 0.4, 0.3, 0.2) for tol in (-9.0, -4.0, -1.0, 0.0, -19.0, -49.0) for z in (2.0, 1.0, 3.0)
    for window in (0.5, 1.0)
]
#: Optuna's pruners (sweep_study's candidates: median, percentile, successive halving, Hyperband).
OPTUNA_CANDIDATES = sweep_study.CANDIDATES
#: The shipped conf/pruner/ files, replayed as they are.
SHIPPED = [("pruner=curve (shipped)", "curve", {}), ("pruner=median (shipped)", "median", {}),
           ("pruner=percentile (shipped)", "percentile", {})]


def candidates(settings: list[sweep_study.Setting], every: int) -> list[tuple[str, str, dict[str, Any]]]:
    # sweep_study's labels say "FID" for an evaluation; here the pruners read val/mmd
    return [(label.replace("FID", "evaluation"), option, sweep_study.pruner_overrides(option, s, every))
            for label, option, s in settings]


# ---------------------------------------------------------------------------------------------- analysis
def sweeps_of(records: dict[str, dict[str, list[dict[str, Any]]]], families: dict[str, Family],
              seeds: str) -> dict[str, dict[str, Any]]:
    """``{"family/seed": {"trials", "budget", "every", "noise"}}`` for the ``seeds`` part ("selection"/"heldout")."""
    out = {}
    for name, fam in families.items():
        for seed in getattr(fam, seeds):
            trials = records.get(name, {}).get(str(seed))
            if not trials:
                continue
            spec = trials[0]["spec"]
            out[f"{name}/{seed}"] = {"trials": [{"trial": t["spec"]["trial"], "evaluations": t["evaluations"]}
                                                for t in trials],
                                     "budget": spec["max_g_steps"], "every": spec["every"],
                                     "noise": max(t["grader_noise"] or 0.0 for t in trials)}
    return out


def analyse(records: dict[str, dict[str, list[dict[str, Any]]]], families: dict[str, Family]) -> dict[str, Any]:
    selection, heldout = sweeps_of(records, families, "selection"), sweeps_of(records, families, "heldout")
    every = next(iter(selection.values()))["every"]
    out: dict[str, Any] = {"selection_rule": sweep_study.SELECTION_RULE.replace("best-FID", "truth").replace("best FID", "truth")}
    for kind, settings in (("curve", CURVE_CANDIDATES), ("optuna", OPTUNA_CANDIDATES)):
        rows = [replay_setting(selection, *c) for c in candidates(settings, every)]
        chosen = sweep_study.choose(rows)
        rows.sort(key=sweep_study.rank_key(rows))
        held = replay_setting(heldout, chosen["pruner"], chosen["option"], chosen["overrides"])
        after = [replay_setting(heldout, *c) for c in candidates(settings, every)]
        after.sort(key=sweep_study.rank_key(after))
        out[kind] = {"chosen": {k: chosen[k] for k in ("pruner", "option", "overrides")}, "selection": chosen,
                     "heldout": held, "candidates": [_brief(r) for r in rows],
                     "heldout_candidates": [_brief(r) for r in after]}
    out["shipped"] = {label: {"selection": replay_setting(selection, label, option, o),
                              "heldout": replay_setting(heldout, label, option, o)} for label, option, o in SHIPPED}
    out["unpruned"] = {key: {"best_trial": pick(sw["trials"], unpruned_rows(sw["trials"], sw["budget"]))["trial"]}
                       for key, sw in {**selection, **heldout}.items()}
    return out


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "seeds": {k: {f: v for f, v in r.items() if f != "pruned_at"} for k, r in row["seeds"].items()}}


# ---------------------------------------------------------------------------------------------- confirmation
#: What the recorder leaves out (logger, sample grids, checkpoints, the end-of-run best-of re-scoring) and what makes
#: the ring sweep report and optimize val/mmd and run every trial to its budget unless pruned.
CONFIRM_OVERRIDES = ("early_stopping=none", "logger=none", "~callbacks.samples", "~callbacks.checkpoint",
                     "~callbacks.best_generator", "trainer.enable_progress_bar=false",
                     f"callbacks.optuna_pruning.monitor={METRIC}", f"callbacks.optuna_pruning.step_key={METRIC}_g_step",
                     "optimized_metric=best_value", "hydra.sweeper.direction=minimize")


def confirm(name: str, fam: Family, seed: int, option: str, overrides: dict[str, Any], trials: list[dict[str, Any]],
            work: Path) -> dict[str, Any]:
    """Run the real pruned sweep (``regan-train -m``, the regan_optuna sweeper, trials one after the other) and
    compare it trial by trial with the replay of the same pruner on the recordings."""
    from lightning_regan.sweep import load_study

    sweep_dir = work / "confirm" / f"{name}_s{seed}_{sweep_study.slug(option, overrides)}"
    cmd = ["regan-train", "-m", *fam.overrides, f"hparams_search={fam.hparams}", *CONFIRM_OVERRIDES,
           f"max_g_steps={fam.max_g_steps}", f"callbacks.fid.every_n_g_steps={fam.every}", f"pruner={option}",
           *(f"pruner.{k}={v}" for k, v in overrides.items()), f"hydra.sweeper.sampler.seed={seed}",
           f"hydra.sweeper.n_trials={fam.n_trials}", f"hydra.sweep.dir={sweep_dir}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(f"{sweep_dir}.log", "a") as log:
        proc = subprocess.run([sys.executable, "-m", "lightning_regan.cli.train", *cmd[1:]], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=sweep_dir.parent)
    if proc.returncode:
        raise SystemExit(f"the confirmation sweep failed (exit {proc.returncode}); see {sweep_dir}.log")
    wall = time.perf_counter() - start
    study = load_study(str(sweep_dir / "optuna.journal"))
    trials_min = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                     if t.datetime_complete is not None and t.datetime_start is not None) / 60
    real = [{"trial": t.number, "state": t.state.name, "params": dict(t.params),
             "pruned_at": max(t.intermediate_values) if t.state.name == "PRUNED" else None,
             "values": {int(k): float(v) for k, v in t.intermediate_values.items()}} for t in study.trials]
    pruner = sweep_study.make_pruner(option, overrides, fam.max_g_steps, fam.every)
    replayed = replay(trials, pruner, fam.max_g_steps)
    recorded = [{e["g_step"]: e["value"] for e in t["evaluations"]} for t in trials]
    diffs = [abs(v - recorded[r["trial"]][k]) / abs(recorded[r["trial"]][k]) for r in real for k, v in r["values"].items()]
    expected_params = trial_params(fam.hparams, seed, fam.n_trials)
    rows = [{"trial": r["trial"], "real_pruned_at": r["pruned_at"], "replay_pruned_at": p["pruned_at"],
             "agree": r["pruned_at"] == p["pruned_at"]} for r, p in zip(real, replayed)]
    agree = sum(r["agree"] for r in rows)
    same_params = all(r["params"] == p for r, p in zip(real, expected_params)) and len(real) == len(expected_params)
    real_steps = sum(r["pruned_at"] or fam.max_g_steps for r in real)
    summary = (f"{agree} of {len(rows)} trials pruned at the same G step as in the replay (or kept by both); "
               f"parameters the study's: {same_params}; reported {METRIC} against the recording: largest relative "
               f"difference {max(diffs):.1e}; G steps {real_steps:,} real, {sum(r['g_steps'] for r in replayed):,} "
               f"replayed; trials {trials_min:.1f} min")
    return {"command": shlex.join(cmd), "family": name, "seed": seed, "option": option, "overrides": overrides,
            "wall_s": wall, "trials_min": trials_min, "rows": rows, "trials_agreeing": agree, "trials": len(rows), "same_params": same_params,
            "max_rel_value_difference": max(diffs), "g_steps_real": real_steps,
            "g_steps_replay": sum(r["g_steps"] for r in replayed), "summary": summary}


# ---------------------------------------------------------------------------------------------- main
def record_all(families: dict[str, Family], work: Path, quick: bool,
               only: Optional[list[str]] = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Record (or read back) every trial of every sweep, ring first; ``only``: ``family/seed`` keys to record."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, fam in families.items():
        for seed in (*fam.selection, *fam.heldout):
            if only is not None and f"{name}/{seed}" not in only:
                continue
            params = trial_params(fam.hparams, seed, fam.n_trials)
            trials = []
            for number, p in enumerate(params):
                rec = record_trial(trial_spec(name, fam, seed, number, p, work, quick))
                print(f"{name} seed {seed} trial {number}: {rec['wall_s']:.0f} s, best {METRIC} "
                      f"{handed_over(rec['evaluations'])['value'] if handed_over(rec['evaluations']) else None}",
                      flush=True)
                trials.append(rec)
            out.setdefault(name, {})[str(seed)] = trials
    return out


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_study.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "sweep_study.md").write_text(markdown(report))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep_truth_study"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--only", nargs="+", help="record only these sweeps (family/seed), no analysis")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 3 trials, 1+1 seeds (a smoke test)")
    parser.add_argument("--replay", nargs="?", const=RESULTS / "sweep_study.json", type=Path,
                        help="re-analyse a written sweep_study.json's recordings (no training)")
    parser.add_argument("--confirm", nargs="+", metavar="FAMILY/SEED",
                        help="run real pruned sweeps (e.g. ring/2) with the setting chosen in <out>/sweep_study.json "
                             "and add their comparison with the replay to that file")
    parser.add_argument("--confirm-with", choices=("curve", "optuna"), default="curve",
                        help="which chosen setting --confirm runs: pruner=curve's or Optuna's")
    args = parser.parse_args(argv)
    command = ("python studies/sweep_truth_study.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    families = {n: FAMILIES[n] for n in args.families}
    if args.quick:
        families = {n: Family(f.hparams, f.description, f.overrides, 40, 10, 3, (0,), (1,), f.points, f.quick)
                    for n, f in families.items()}
    if args.confirm:
        report = json.loads((args.out / "sweep_study.json").read_text())
        chosen = report["analysis"][args.confirm_with]["chosen"]
        report.pop("confirmation", None)  # the first version's single entry
        confirmations = report.setdefault("confirmations", {})
        for key in args.confirm:
            name, seed = key.split("/")
            trials = [{"trial": t["spec"]["trial"], "evaluations": t["evaluations"]}
                      for t in report["records"][name][seed]]
            fam = families[name]
            if args.quick:
                fam = Family(fam.hparams, fam.description,
                             (*fam.overrides, *fam.quick, "callbacks.fid.num_samples=200"), fam.max_g_steps,
                             fam.every, fam.n_trials, fam.selection, fam.heldout, fam.points)
            result = confirm(name, fam, int(seed), chosen["option"], chosen["overrides"], trials, args.work)
            confirmations[f"{key} {args.confirm_with}"] = result
            print(key, args.confirm_with, result["summary"])
        write(report, args.out)
        return 0
    if args.replay:
        report = json.loads(args.replay.read_text())
        report.pop("analysis", None)
        records = report["records"]
        report["replay_command"] = command
    else:
        start = time.perf_counter()
        records = record_all(families, args.work, args.quick, args.only)
        if args.only:
            return 0
        report = {"command": command, "machine": f"{platform.machine()} ({os.cpu_count()} cores), Python "
                  f"{platform.python_version()}", "record_wall_s": time.perf_counter() - start,
                  "metric": METRIC, "epsilon": EPSILON, "target_share": TARGET_SHARE,
                  "families": {n: {"hparams_search": f.hparams, "description": f.description,
                                   "overrides": list(f.overrides), "max_g_steps": f.max_g_steps, "every": f.every,
                                   "n_trials": f.n_trials, "selection_seeds": list(f.selection),
                                   "heldout_seeds": list(f.heldout)} for n, f in families.items()},
                  "records": records}
    report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["timing"] = {n: {"trial_wall_s_median": sorted(t["wall_s"] for ts in seeds.values() for t in ts)[
        len([t for ts in seeds.values() for t in ts]) // 2], "trials": sum(len(ts) for ts in seeds.values())}
        for n, seeds in report["records"].items()}
    fams = {n: Family(f["hparams_search"], f["description"], tuple(f["overrides"]), f["max_g_steps"], f["every"],
                      f["n_trials"], tuple(f["selection_seeds"]), tuple(f["heldout_seeds"]))
            for n, f in report["families"].items()}
    report["analysis"] = analyse(report["records"], fams)
    write(report, args.out)
    print((args.out / "sweep_study.md").read_text())
    return 0


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0%}"


def _gap(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:+.1%}"


def heldout_table(result: dict[str, Any]) -> list[str]:
    lines = ["| sweep | pruned | G steps ratio | pick pruned / unpruned | truth pruned / unpruned | gap | targets |",
             "|---|---|---|---|---|---|---|"]
    for key, r in result["seeds"].items():
        lines.append(f"| {key} | {r['pruned_trials']} | {_pct(r['g_steps_ratio'])} | {r['best_trial']} / "
                     f"{r['unpruned_best_trial']} | {r['best_truth']:.4g} / {r['unpruned_best_truth']:.4g} | "
                     f"{_gap(r['truth_gap'])} | {'met' if r['meets_targets'] else 'best kept' if r['keeps_best'] else 'NOT met'} |")
    return lines


def candidate_table(rows: list[dict[str, Any]], chosen: str, limit: int = 15) -> list[str]:
    keys = list(rows[0]["seeds"]) if rows else []
    lines = ["| pruner | " + " | ".join(keys) + " | targets |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows[:limit]:
        name = f"**{r['pruner']}**" if r["pruner"] == chosen else r["pruner"]
        cells = [f"{_pct(s['g_steps_ratio'])}, {'kept' if s['keeps_best'] else _gap(s['truth_gap'])}"
                 for s in r["seeds"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + ("met" if r["meets_targets"] else "best kept" if r["keeps_best"] else "") + " |")
    return lines


def held_out_summary(result: dict[str, Any]) -> str:
    """``"kept the best trial on K of N held-out sweeps, running A-B % of the unpruned G steps"`` of a replayed
    setting (``analysis[...]["heldout"]``): the figures the docs quote."""
    seeds = result["seeds"].values()
    ratios = sorted(r["g_steps_ratio"] for r in seeds)
    return (f"kept the best trial on {sum(r['keeps_best'] for r in seeds)} of {len(seeds)} held-out sweeps, running "
            f"{100 * ratios[0]:.0f}-{ratios[-1]:.0%} of the unpruned G steps; {sum(r['meets_targets'] for r in seeds)} of "
            f"{len(seeds)} meet both targets").replace("%", " %")


def markdown(report: dict[str, Any]) -> str:
    a = report["analysis"]
    lines = ["# Sweep pruners on the stop metric, graded on ground truth", "",
             f"Command: `{report['command']}`"
             + (f", re-analysed with `{report['replay_command']}`" if report.get("replay_command") else "")
             + f"; {report['date']}; {report['machine']}. Metric reported to the pruner: "
             f"`{report['metric']}`; grading: the pick's ground truth (ring: MMD² of 10,000 generated vs 10,000 fresh "
             "real points; digits: classifier-feature FID of 10,000 generated images vs all 1,797 digits).", ""]
    for n, f in report["families"].items():
        lines.append(f"- `{n}` (`hparams_search={f['hparams_search']}`, {f['description']}): {f['n_trials']} trials "
                     f"x {f['max_g_steps']} G steps, `{METRIC}` every {f['every']}; selection seeds "
                     f"{f['selection_seeds']}, held-out {f['heldout_seeds']}; median trial "
                     f"{report['timing'][n]['trial_wall_s_median']:.0f} s.")
    lines += ["", f"Selection rule: {a['selection_rule']}.", ""]
    for kind, title in (("curve", "`pruner=curve`"), ("optuna", "Optuna's pruners")):
        c = a[kind]
        lines += [f"## {title}: chosen on the selection seeds, tested on the held-out seeds", "",
                  f"Chosen: **{c['chosen']['pruner']}** (`pruner={c['chosen']['option']} "
                  + " ".join(f"pruner.{k}={v}" for k, v in c["chosen"]["overrides"].items()) + "`).", "",
                  *heldout_table(c["heldout"]), "",
                  f"Held-out targets: **{'met' if c['heldout']['meets_targets'] else 'NOT met'}**: "
                  f"{held_out_summary(c['heldout'])}.", "",
                  "Candidates on the selection seeds (G steps ratio, best kept or truth gap), ranked by the rule:", "",
                  *candidate_table(c["candidates"], c["chosen"]["pruner"]), "",
                  "After the choice, for reference: the candidates on the held-out seeds:", "",
                  *candidate_table(c["heldout_candidates"], c["chosen"]["pruner"]), ""]
    lines += ["## Where each trial was cut on the held-out sweeps (G step; `-`: ran its budget; `*`: the unpruned "
              "sweep's pick)", "", "| sweep | pruner | " + " | ".join(f"t{k}" for k in range(max(
                  f["n_trials"] for f in report["families"].values()))) + " |",
              "|---|---|" + "---|" * max(f["n_trials"] for f in report["families"].values())]
    for key in a["curve"]["heldout"]["seeds"]:
        for kind in ("curve", "optuna"):
            r = a[kind]["heldout"]["seeds"][key]
            cells = [("-" if at is None else str(at)) + ("*" if int(t) == r["unpruned_best_trial"] else "")
                     for t, at in r["pruned_at"].items()]
            lines.append(f"| {key} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## Shipped conf/pruner/ defaults on the held-out seeds", ""]
    for label, r in a["shipped"].items():
        lines += [f"### {label}", "", *heldout_table(r["heldout"]), ""]
    if report.get("confirmations"):
        lines += ["## Confirmation: real pruned sweeps against the replay", ""]
        for key, c in report["confirmations"].items():
            lines += [f"- {key}: `{c['command']}`: {c['summary']}."]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

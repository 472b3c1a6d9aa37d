"""CurvePruner on synthetic learning curves: late starters survive, flat losers are cut, the leader is never cut,
resume decides the same, maximize, arguments; through OptunaPruning and from conf/pruner/curve.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from lightning_regan.callbacks import OptunaPruning, RunSummary
from lightning_regan.sweep import open_storage
from lightning_regan.sweep.curve_pruner import CurvePruner

from test_early_termination import ScriptedFID, ScriptedGAN, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = range(100, 1001, 100)
BUDGET = 1000
#: A steady trial: 2.0 at G step 100 falling as a power law to 0.2 at 1,000.
STEADY = {s: 2.0 * (s / 100) ** -1.0 for s in STEPS}
#: Slow start (3.4, 3.2, 2.8 over the first 300 G steps, worse than STEADY's 1.0-0.67 there), then a steep fall to
#: 0.01: it finishes best. Optuna's median/percentile pruners cut it at its first checks (docs/studies/sweep_pruner.md).
LATE = dict(zip(STEPS, [3.4, 3.2, 2.8, 1.9, 1.0, 0.45, 0.18, 0.07, 0.03, 0.01]))
#: The same, with its fall already under way at G step 300.
EARLY_FALL = dict(zip(STEPS, [3.4, 2.2, 1.2, 0.6, 0.3, 0.15, 0.07, 0.035, 0.018, 0.01]))
#: Never leaves its first value: hopeless.
FLAT = {s: 3.5 + 0.01 * (k % 2) for k, s in enumerate(STEPS)}
#: Strict settings for the scripted decisions: come within 1.5 x the incumbent, judged from 20 % of the budget.
STRICT = {"budget_g_steps": BUDGET, "tolerance": -0.5, "min_budget_share": 0.2}


def pruned_at(study: optuna.Study, curve: dict[int, float], attrs: dict | None = None) -> int | None:
    """Feed ``curve`` to a new trial as OptunaPruning does; the G step it is pruned at (``None``: it finishes)."""
    trial = study.ask()
    for key, value in (attrs or {}).items():
        trial.set_user_attr(key, value)
    for step, value in curve.items():
        if OptunaPruning.should_prune_trial(trial, step, value):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, min(curve.values()) if study.direction.name == "MINIMIZE" else max(curve.values()))
    return None


def test_a_late_starter_survives_and_a_flat_loser_is_cut():
    """The shipped defaults (conf/pruner/curve.yaml): judged from half of the budget, within 10 x the incumbent."""
    study = optuna.create_study(pruner=CurvePruner(budget_g_steps=BUDGET))
    assert pruned_at(study, STEADY) is None  # nothing to compare with
    assert pruned_at(study, LATE) is None  # worse than STEADY for 500 G steps, but its curve heads below 0.2
    assert study.best_value == pytest.approx(0.01)
    assert pruned_at(study, FLAT) == 500  # first judged at half of the budget: 3.5 cannot come near 0.01
    # The same late starter with the median pruner after one finished trial: cut at its first report.
    median = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    assert pruned_at(median, STEADY) is None and pruned_at(median, LATE) == 100


def test_strict_settings_cut_what_has_not_started_falling_and_keep_what_has():
    """Judged from 20 % of the budget, the curve model sees a fall under way but not one still to come."""
    study = optuna.create_study(pruner=CurvePruner(**STRICT))
    pruned_at(study, STEADY)
    assert pruned_at(study, FLAT) == 300  # first judged at G step 200, with 3 evaluations at 300
    assert pruned_at(study, LATE) == 300  # 3.4 -> 2.8 by G step 300: projected to 2.1, not below 0.2
    assert pruned_at(study, EARLY_FALL) is None


def test_no_cut_before_the_minimum_evaluations_and_share_of_the_budget():
    study = optuna.create_study(pruner=CurvePruner(budget_g_steps=BUDGET, tolerance=0.0, min_evaluations=5,
                                                   min_budget_share=0.6))
    pruned_at(study, STEADY)
    assert pruned_at(study, FLAT) == 600  # 5 evaluations by 500, 60 % of the budget at 600
    study = optuna.create_study(pruner=CurvePruner(budget_g_steps=BUDGET, tolerance=0.0, min_evaluations=7,
                                                   min_budget_share=0.0))
    pruned_at(study, STEADY)
    assert pruned_at(study, FLAT) == 700


def test_a_trial_better_than_the_incumbent_is_never_cut():
    """A trial whose own best beats every other trial's is kept, even when its curve has flattened completely."""
    study = optuna.create_study(pruner=CurvePruner(budget_g_steps=BUDGET, tolerance=0.5, z=0.0, min_budget_share=0.2))
    pruned_at(study, FLAT)
    leader = {s: 1.0 for s in STEPS}  # flat from the start, but below FLAT's 3.5 at every evaluation
    assert pruned_at(study, leader) is None
    # A flat trial just above the leader: cut (its optimistic end cannot beat 1.0).
    assert pruned_at(study, {s: 1.05 for s in STEPS}) == 300
    # A trial still falling fast: the optimistic projection beats 1.0 by far, kept although it is behind now.
    assert pruned_at(study, {s: 3.0 * (s / 100) ** -2.0 for s in STEPS}) is None


def test_tolerance_and_noise_optimism_widen_or_narrow_what_survives():
    slow = {s: (s / 100) ** -0.05 for s in STEPS}  # ends at 0.89, 27 % above the incumbent's 0.7 ...
    noisy = {s: v * (1.15 if k % 2 else 0.87) for k, (s, v) in enumerate(slow.items())}  # ... or noisy around that

    def decisions(**kwargs) -> list[int | None]:
        study = optuna.create_study(pruner=CurvePruner(budget_g_steps=BUDGET, min_budget_share=0.2, min_evaluations=6,
                                                       **kwargs))
        pruned_at(study, {s: 0.7 for s in STEPS})
        return [pruned_at(study, slow), pruned_at(study, noisy)]

    assert decisions(z=0.0, tolerance=0.0) == [600, 600]
    assert decisions(z=0.0, tolerance=-0.5) == [None, None]  # keep trials that can come within 1.5 x
    # Two residual spreads of optimism: the noise could still carry the noisy one below 0.7; a clean curve gets none.
    assert decisions(z=2.0, tolerance=0.0) == [600, None]


def test_the_incumbent_counts_running_and_pruned_trials_not_failed_ones():
    study = optuna.create_study(pruner=CurvePruner(**STRICT))
    failed = study.ask()
    failed.report(0.001, 100)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert pruned_at(study, FLAT) is None  # a failed trial's value is no incumbent: nothing to compare with
    running = study.ask()
    running.report(0.5, 100)  # still running (a parallel job): its value counts
    assert pruned_at(study, FLAT) == 300


def test_a_resumed_study_or_a_second_pruner_decides_the_same(tmp_path):
    """Everything the pruner reads is in the storage: a new study and pruner object over the same journal (a killed
    sweep resumed, or another job) give the same decision for every trial at every step."""
    storage = str(tmp_path / "optuna.journal")
    first = optuna.create_study(study_name="s", storage=open_storage(storage),
                                pruner=CurvePruner(**STRICT))
    outcomes = [pruned_at(first, c) for c in (STEADY, FLAT, EARLY_FALL, {s: 0.5 * v for s, v in FLAT.items()})]
    assert outcomes == [None, 300, None, 300]
    running = first.ask()
    for step, value in list(EARLY_FALL.items())[:5]:
        running.report(value, step)

    def judged(study: optuna.Study, pruner: CurvePruner) -> list[list[bool]]:
        out = []
        for t in study.get_trials(deepcopy=False):
            rows = []
            for step in sorted(t.intermediate_values):
                prefix = optuna.trial.create_trial(
                    state=optuna.trial.TrialState.RUNNING,
                    intermediate_values={s: v for s, v in t.intermediate_values.items() if s <= step})
                prefix.number = t.number
                rows.append(pruner.prune(study, prefix))
            out.append(rows)
        return out

    again = optuna.load_study(study_name="s", storage=open_storage(storage), pruner=CurvePruner(**STRICT))
    before = judged(first, first.pruner)
    assert before == judged(again, again.pruner)
    # STEADY is now behind EARLY_FALL's 0.01 from G step 300 (its last evaluation is its budget: no cut there); the
    # trial left running (EARLY_FALL's first 5 values) likewise once it has 3 evaluations.
    assert [[k for k, cut in enumerate(rows) if cut] for rows in before] == [
        [2, 3, 4, 5, 6, 7, 8], [2], [], [2], [2, 3, 4]]
    # The trial the killed sweep left running goes on in the resumed study, judged as the first study judges it.
    trial = optuna.trial.Trial(again, running._trial_id)
    for step, value in list(EARLY_FALL.items())[5:]:
        trial.report(value, step)
        assert trial.should_prune() == first.pruner.prune(first, first.trials[running.number])


def test_maximize_flips_the_direction():
    """For a score where higher is better the pruner fits 1 / value: a late riser survives, a flat one is cut."""
    study = optuna.create_study(direction="maximize", pruner=CurvePruner(**STRICT))
    assert pruned_at(study, {s: 1.0 / v for s, v in STEADY.items()}) is None
    assert pruned_at(study, {s: 1.0 / v for s, v in EARLY_FALL.items()}) is None
    assert study.best_value == pytest.approx(100.0)
    assert pruned_at(study, {s: 1.0 / v for s, v in FLAT.items()}) == 300
    assert pruned_at(study, {s: 200.0 for s in STEPS}) is None  # above the incumbent: never cut
    # Non-positive scores cannot be fitted on 1 / value: they count as no evaluation (never a cut on them).
    assert pruned_at(study, {s: 0.0 for s in STEPS}) is None


def test_the_budget_comes_from_the_pruner_or_the_trials_user_attribute():
    study = optuna.create_study(pruner=CurvePruner(tolerance=0.0, min_budget_share=0.2))
    pruned_at(study, STEADY, {"max_g_steps": BUDGET})
    assert pruned_at(study, FLAT, {"max_g_steps": BUDGET}) == 300
    assert pruned_at(study, FLAT, {"max_g_steps": 300}) is None  # budget reached: nothing left to save
    with pytest.raises(ValueError, match="trial 3 has no budget: pass budget_g_steps"):
        pruned_at(study, FLAT)


@pytest.mark.parametrize("kwargs, message", [
    ({"budget_g_steps": 0}, "budget_g_steps must be an integer >= 1"),
    ({"budget_g_steps": 10.5}, "budget_g_steps must be an integer >= 1"),
    ({"tolerance": 1.0}, "tolerance must be a number < 1"),
    ({"tolerance": float("nan")}, "tolerance must be a number < 1"),
    ({"tolerance": "0.1"}, "tolerance must be a number < 1"),
    ({"min_budget_share": 1.0}, r"min_budget_share must be a number in \[0, 1\)"),
    ({"min_budget_share": True}, r"min_budget_share must be a number"),
    ({"z": -1.0}, "CurvePruner: z must be"),
    ({"window": 0.0}, "CurvePruner: window must be"),
    ({"window": 1.5}, "CurvePruner: window is a share of the run"),
    ({"min_evaluations": 1}, "CurvePruner: min_evaluations must be"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurvePruner(**kwargs)


def test_every_conf_pruner_builds_and_curve_is_the_curve_pruner():
    """``pruner=<option>`` for every file in conf/pruner (the Optuna pruners stay selectable), built as a trial
    builds it; ``pruner=curve`` takes its budget from max_g_steps."""
    from hydra.utils import instantiate

    built = {}
    for path in sorted((REPO_ROOT / "conf" / "pruner").glob("*.yaml")):
        root = OmegaConf.create({"max_g_steps": 1500, "callbacks": {"fid": {"every_n_g_steps": 100}},
                                 "pruner": OmegaConf.load(path)})
        built[path.stem] = instantiate(root.pruner)
        assert isinstance(built[path.stem], optuna.pruners.BasePruner)
    assert {"curve", "median", "percentile", "successive_halving", "hyperband", "none"} <= set(built)
    assert isinstance(built["curve"], CurvePruner) and built["curve"].budget_g_steps == 1500


def test_through_optuna_pruning_a_flat_trial_stops_training(tmp_path):
    """The pruner behind the sweep's callback: a real Trainer, the trial in a journal file, stopped at the step the
    pruner decides and recorded as pruned in summary.json."""
    pruner = CurvePruner(budget_g_steps=60, tolerance=0.0, min_evaluations=3, min_budget_share=0.0)
    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), pruner=pruner)
    done = study.ask()
    for g in range(5, 61, 5):
        done.report(2.0 * (g / 5) ** -1.0, g)
    study.tell(done, 2.0 / 12)
    trial = study.ask()
    cb = OptunaPruning(storage, "s", trial.number, pruner)
    module = ScriptedGAN()
    fit(module, [ScriptedFID({g: 3.0 for g in range(5, 61, 5)}), cb, RunSummary(tmp_path / "run")], g_steps=60)
    assert cb.pruned and cb.pruned_g_step == 15 == module.g_steps
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "pruned" and s["optuna"]["pruner"] == "CurvePruner"


@pytest.mark.slow  # a whole sweep through regan-train (4 trials, basic launcher)
def test_a_sweep_with_pruner_curve_prunes_the_trials_whose_generator_never_moves(tmp_path):
    """``pruner=curve`` through the regan_optuna sweeper: the two configurations that never move G are cut at half
    of their budget (5 FIDs), the two that train run to the end."""
    from test_sweep import load_study, run_sweep

    sweep = tmp_path / "sweep"
    run_sweep(sweep, "max_g_steps=100", "hydra.sweeper.n_trials=4", "pruner=curve", "pruner.tolerance=0.0")
    study = load_study(str(sweep / "optuna.journal"))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    for t in study.trials[2:]:
        s = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert s["status"] == "pruned" and s["optuna"]["pruner"] == "CurvePruner"
        assert s["optuna"]["pruned_g_step"] == 50


# ------------------------------------------------------------------------------- the study and its quotes
def test_the_study_figures_in_the_docs_are_the_committed_results():
    """docs/studies/sweep_pruner.md quotes rows of studies/results/sweep_curve_study.md; docs/sweeps.md quotes the
    held-out G-step shares; pruner=curve and CurvePruner's defaults are the study's choice."""
    results = json.loads((REPO_ROOT / "studies" / "results" / "sweep_curve_study.json").read_text())
    assert not set(results["selection_seeds"]) & set(results["heldout_seeds"])
    assert set(results["seeds"]) == set(results["heldout_seeds"]) == {"2", "3"}
    report = (REPO_ROOT / "studies" / "results" / "sweep_curve_study.md").read_text()
    rows = {line for line in report.splitlines() if line.startswith("| ") and not line.startswith("|---")}
    page = (REPO_ROOT / "docs" / "studies" / "sweep_pruner.md").read_text()
    quoted = page.split("<!-- sweep-curve-study -->", 1)[1].split("\n\n#", 1)[0]
    table = [line for line in quoted.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert len(table) == 3 and set(table) <= rows
    assert ("**not met**" in quoted) is not results["meets_targets"]
    for seed, r in results["seeds"].items():
        assert r["meets_targets"] == (r["g_steps_ratio"] <= 0.40 and (r["same_best_trial"] or r["best_fid_gap"] <= 0.05))
        assert r["g_steps_ratio"] == sum(row["g_steps"] for row in r["rows"]) / (1000 * len(r["rows"]))
    ratios = " and ".join(f"{results['seeds'][s]['g_steps_ratio']:.0%}" for s in ("2", "3"))
    guide = (REPO_ROOT / "docs" / "sweeps.md").read_text()
    assert f"running {ratios} of the unpruned sweep's G steps" in guide
    percentile = json.loads((REPO_ROOT / "studies" / "results" / "sweep_study_fid.json").read_text())["seeds"]["3"]
    assert f"(its best {percentile['best_fid_gap']:.0%} worse) at {percentile['g_steps_ratio']:.0%}".replace(
        "%", " %") in guide
    f = results["fidelity"]
    assert f"{f['setting_seeds_reproduced']} of {f['setting_seeds']:,} (setting, seed) replays" in page
    assert f"differs by {f['mean_abs_ratio_difference']:.1%} on average".replace("%", " %") in page

    chosen = results["chosen"]["overrides"]
    conf = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "pruner" / "curve.yaml"))
    assert {k: conf[k] for k in chosen} == chosen
    default = CurvePruner()
    assert {k: getattr(default, k) for k in chosen} == chosen


def test_the_study_replays_the_curve_pruner_on_reconstructed_curves():
    """studies/sweep_curve_study.py: a trial's curve is rebuilt from the replayed settings' rows (best FID so far at
    each pruning step, the best at the end) and replayed through the sweep study's replay."""
    import importlib.util
    import sys

    sys.path.insert(0, str(REPO_ROOT / "studies"))
    spec = importlib.util.spec_from_file_location("sweep_curve_study", REPO_ROOT / "studies" / "sweep_curve_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    row = lambda trial, at, best, steps=1000: {"trial": trial, "params": {"x": trial}, "g_steps": at or steps,
                                                "pruned_at": at, "best_fid": best}
    payloads = [{"rows": [{"seeds": {"0": {"rows": [row(0, None, 0.2), row(1, 300, 3.5)]}}},
                          {"seeds": {"0": {"rows": [row(0, None, 0.2), row(1, 500, 3.5)]}}}]},
                {"candidates": [{"seeds": {"0": {"rows": [row(0, None, 0.2), row(1, 100, 3.6)]}}}]}]
    trials = study.reconstruct(payloads)
    assert trials == {"0": {0: {"params": {"x": 0}, "curve": {1000: 0.2}, "best_fid": 0.2},
                            1: {"params": {"x": 1}, "curve": {300: 3.5, 500: 3.5, 100: 3.6}, "best_fid": None}}}
    trials["0"][1]["curve"].update({700: 3.5, 1000: 3.5})
    trials["0"][1]["best_fid"] = 3.5
    frozen = study.frozen_trials(trials["0"])
    assert [t.number for t in frozen] == [0, 1] and list(frozen[1].intermediate_values) == [100, 300, 500, 700, 1000]
    replayed = study.sweep_study.replay(frozen, CurvePruner(budget_g_steps=1000))
    assert replayed["rows"][1]["pruned_at"] == 500 and replayed["g_steps"] == 1500 and replayed["same_best_trial"]

"""studies/sweep_truth_study.py: the replay of pruners on recorded sweeps and its grading by ground truth (seconds,
synthetic records), and the committed results against the docs that quote them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import optuna
import pytest

from lightning_regan.sweep.curve_pruner import CurvePruner

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "studies" / "results" / "sweep_study.json"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(REPO_ROOT / "studies"))
    spec = importlib.util.spec_from_file_location("sweep_truth_study", REPO_ROOT / "studies" / "sweep_truth_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def trial(number: int, values: list[float], truths: list[float], every: int = 100) -> dict:
    return {"trial": number, "evaluations": [{"g_step": every * (k + 1), "value": v, "truth": t}
                                             for k, (v, t) in enumerate(zip(values, truths))]}


FLAT = [1.0] * 10


def test_replay_cuts_each_trial_where_the_pruner_says_with_only_earlier_trials_as_incumbent(study):
    """Trial 0 is a flat loser but nothing has reported before it: kept. Trial 2, the same flat loser after trial 1
    reached 0.01, is cut at the first evaluation the pruner may cut (half the budget); trial 1 is never compared with
    trial 2 or 3 (later trials), so it is not cut although trial 3 ends better."""
    falling = [0.5 / (k + 1) ** 2 for k in range(10)]  # 0.5 ... 0.005
    best = [0.9 / (k + 1) ** 3 for k in range(10)]  # ends at 0.0009, best of all
    trials = [trial(0, FLAT, FLAT), trial(1, falling, falling), trial(2, FLAT, FLAT), trial(3, best, best)]
    pruner = CurvePruner(budget_g_steps=1000, tolerance=0.0, min_budget_share=0.5)
    rows = study.replay(trials, pruner, 1000)
    assert [r["pruned_at"] for r in rows] == [None, None, 500, None]
    assert [r["g_steps"] for r in rows] == [1000, 1000, 500, 1000]
    assert rows[1]["value"] == pytest.approx(0.005) and rows[2]["value"] == 1.0

    # the replay is live: the same records with the pruner off run every G step
    off = study.replay(trials, optuna.pruners.NopPruner(), 1000)
    assert all(r["pruned_at"] is None for r in off)


def test_grade_counts_g_steps_and_grades_the_pick_by_its_truth(study):
    """G-step share = steps run / (budget x trials); the pick is the completed trial with the best reported value,
    graded by the truth of its best evaluation (not by the reported value)."""
    trials = [trial(0, [0.5, 0.3], [0.50, 0.31]), trial(1, [0.6, 0.2], [0.6, 0.20]), trial(2, [0.9, 0.8], [0.9, 0.8])]
    rows = [{"trial": 0, "g_steps": 200, "pruned_at": None, "value": 0.3},
            {"trial": 1, "g_steps": 100, "pruned_at": 100, "value": 0.6},
            {"trial": 2, "g_steps": 100, "pruned_at": 100, "value": 0.9}]
    g = study.grade(trials, rows, 200, noise=0.0)
    assert g["g_steps"] == 400 and g["g_steps_unpruned"] == 600 and g["g_steps_ratio"] == pytest.approx(400 / 600)
    assert (g["best_trial"], g["unpruned_best_trial"]) == (0, 1) and not g["same_best_trial"]
    assert g["truth_gap"] == pytest.approx(0.31 / 0.20 - 1) and not g["keeps_best"] and not g["meets_targets"]
    # within 5 % of the unpruned pick's truth: kept; the grader's noise widens the tolerance the same way
    close = [trial(0, [0.5, 0.3], [0.5, 0.209]), *trials[1:]]
    assert study.grade(close, rows, 200, noise=0.0)["keeps_best"]
    assert study.grade(trials, rows, 200, noise=0.2)["keeps_best"]
    # the pick's truth is at its best reported value, not at its last evaluation
    late = [trial(0, [0.3, 0.5], [0.30, 0.1]), trial(1, [0.6, 0.4], [0.6, 0.4])]
    full = study.grade(late, [{"trial": t, "g_steps": 200, "pruned_at": None, "value": v}
                              for t, v in ((0, 0.3), (1, 0.4))], 200, noise=0.0)
    assert full["best_truth"] == 0.30 and full["g_steps_ratio"] == 1.0 and full["keeps_best"]
    assert full["meets_targets"] is False  # 100 % of the G steps


def test_handed_over_is_the_first_best_value_up_to_the_cut(study):
    evals = trial(0, [0.5, 0.2, 0.2, 0.1, float("nan")], [5, 2, 3, 1, 0])["evaluations"]
    assert study.handed_over(evals)["g_step"] == 400
    assert study.handed_over(evals, until=300)["g_step"] == 200
    assert study.handed_over(evals, until=50) is None


def test_replay_setting_builds_the_shipped_pruners_and_the_rule_chooses(study):
    """Settings replayed through conf/pruner/ (as sweep_study does), summarised with the keys sweep_study's rule
    reads; the cheapest setting that keeps the best trial is chosen."""
    falling = [0.5 / (k + 1) ** 2 for k in range(10)]
    sweep = {"trials": [trial(0, falling, falling), *[trial(k, FLAT, FLAT) for k in range(1, 6)]],
             "budget": 1000, "every": 100, "noise": 0.0}
    rows = [study.replay_setting({"ring/0": sweep}, "curve 0.5", "curve", {"tolerance": 0.0}),
            study.replay_setting({"ring/0": sweep}, "curve 0.3", "curve", {"tolerance": 0.0, "min_budget_share": 0.3}),
            study.replay_setting({"ring/0": sweep}, "none", "none", {})]
    assert [r["seeds"]["ring/0"]["g_steps_ratio"] for r in rows] == pytest.approx([3500 / 6000, 2500 / 6000, 1.0])
    assert all(r["keeps_best"] for r in rows)
    assert study.sweep_study.choose(rows)["pruner"] == "curve 0.3"


def test_trial_params_are_the_random_samplers_and_do_not_depend_on_the_trial_count(study):
    first = study.trial_params("ring_lr_r1", 3, 5)
    assert study.trial_params("ring_lr_r1", 3, 2) == first[:2] and study.trial_params("ring_lr_r1", 4, 2) != first[:2]
    assert set(first[0]) == {"regularizer.r1.weight", "module.d_optimizer.lr", "module.g_optimizer.lr"}
    assert all(1e-4 <= p["module.d_optimizer.lr"] <= 5e-3 and 0.01 <= p["regularizer.r1.weight"] <= 10 for p in first)
    digits = study.trial_params("digits_lr_r1", 0, 2)
    assert all(5e-5 <= p["module.g_optimizer.lr"] <= 2e-3 for p in digits)


def test_deferred_truth_scores_the_handed_over_evaluation_and_draws_the_reference_once(study, tmp_path):
    import torch

    class Reference:
        calls = 0

        def mmd2(self, fake):
            Reference.calls += 1
            return torch.tensor(float(fake.mean()))

    class Data:
        centers, std = torch.zeros(2, 2), 0.05

    drawn = []
    deferred = study._DeferredTruth()
    wrapped = deferred.wrap(lambda *a: drawn.append(a) or {"rbf": Reference(), "noise": 0.0})
    ref = wrapped(None, Data(), None, 12345, 7)
    assert study._DeferredTruth().wrap(lambda *a: drawn.append(a))(None, Data(), None, 12345, 7)["rbf"] is not None
    assert len(drawn) == 1
    assert ref["rbf"] is deferred
    values = [0.5, 0.1, 0.3, 0.4]
    evaluations = []
    for k, v in enumerate(values):
        assert ref["rbf"].mmd2(torch.full((4, 2), float(k))) != ref["rbf"].mmd2(torch.full((4, 2), float(k)))  # nan
        evaluations.append({"g_step": 100 * (k + 1), "value": v, "truth": float("nan")})
    deferred.fakes = deferred.fakes[::2]  # the recorder calls once per evaluation; the check above called twice
    deferred.fill(evaluations, tmp_path)
    assert [e["truth"] for e in evaluations] == [None, 1.0, None, None] and Reference.calls == 1
    assert torch.load(tmp_path / "fakes.pt").shape == (4, 4, 2)


# ------------------------------------------------------------------------------- the committed study and its quotes
def committed() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_committed_figures_are_the_replay_of_the_committed_records(study):
    """Each held-out figure of the chosen settings is what replaying the recorded sweeps gives now (after a change
    of the stop rule Trend, whose projection pruner=curve uses: `python studies/sweep_truth_study.py --replay`)."""
    results = committed()
    families = {n: study.Family(f["hparams_search"], f["description"], tuple(f["overrides"]), f["max_g_steps"],
                                f["every"], f["n_trials"], tuple(f["selection_seeds"]), tuple(f["heldout_seeds"]))
                for n, f in results["families"].items()}
    assert not any(set(f.selection) & set(f.heldout) for f in families.values())
    heldout = study.sweeps_of(results["records"], families, "heldout")
    assert set(heldout) == {f"{n}/{s}" for n, f in families.items() for s in f.heldout}
    for kind in ("curve", "optuna"):
        chosen = results["analysis"][kind]["chosen"]
        again = study.replay_setting(heldout, chosen["pruner"], chosen["option"], chosen["overrides"])
        saved = results["analysis"][kind]["heldout"]
        for key, r in again["seeds"].items():
            s = saved["seeds"][key]
            assert (r["g_steps"], r["best_trial"], r["keeps_best"]) == (s["g_steps"], s["best_trial"], s["keeps_best"])
            assert s["g_steps_ratio"] == s["g_steps"] / (families[key.split("/")[0]].max_g_steps
                                                         * families[key.split("/")[0]].n_trials)
            assert s["meets_targets"] == (s["keeps_best"] and s["g_steps_ratio"] <= 0.40)
        assert saved["meets_targets"] == all(s["meets_targets"] for s in saved["seeds"].values())


def test_the_docs_quote_the_committed_study(study):
    """docs/studies/sweep_pruner.md quotes rows of studies/results/sweep_study.md; it and the sweeps guide quote the
    held-out summaries of the chosen settings."""
    results = committed()
    report = RESULTS.with_suffix(".md").read_text()
    rows = {line for line in report.splitlines() if line.startswith("| ") and not line.startswith("|---")}
    page = (REPO_ROOT / "docs" / "studies" / "sweep_pruner.md").read_text()
    quoted = page.split("<!-- sweep-truth-study -->", 1)[1].split("\n\n#", 1)[0]
    table = [line for line in quoted.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    n_heldout = sum(len(f["heldout_seeds"]) for f in results["families"].values())
    assert len(table) >= 2 * (1 + n_heldout) and set(table) <= rows
    guide = (REPO_ROOT / "docs" / "sweeps.md").read_text()
    for kind in ("curve", "optuna"):
        summary = study.held_out_summary(results["analysis"][kind]["heldout"])
        assert summary in " ".join(page.split()) and summary in " ".join(guide.split()), summary
        met = results["analysis"][kind]["heldout"]["meets_targets"]
        assert f"**{'met' if met else 'NOT met'}**" in report
    assert ("**not met**" in quoted) is not (results["analysis"]["curve"]["heldout"]["meets_targets"]
                                             and results["analysis"]["optuna"]["heldout"]["meets_targets"])
    for confirmation in results.get("confirmations", {}).values():
        assert confirmation["summary"] in " ".join(page.split())


def test_the_shipped_pruners_figures_in_the_docs_are_the_committed_results():
    """The held-out G-step ranges of the shipped conf/pruner/ files quoted in the pruner study page and the guide."""
    results = committed()
    page = " ".join((REPO_ROOT / "docs" / "studies" / "sweep_pruner.md").read_text().split())
    guide = " ".join((REPO_ROOT / "docs" / "sweeps.md").read_text().split())

    def span(label: str) -> tuple[str, bool]:
        seeds = results["analysis"]["shipped"][label]["heldout"]["seeds"].values()
        ratios = sorted(r["g_steps_ratio"] for r in seeds)
        return f"{100 * ratios[0]:.0f}-{100 * ratios[-1]:.0f} %", all(r["keeps_best"] for r in seeds)

    curve, kept = span("pruner=curve (shipped)")
    assert kept and f"keep the best trial on every held-out sweep at {curve} of the G steps" in page
    assert f"its shipped defaults kept it on all 8 at {curve}" in guide
    (median, median_kept), (percentile, percentile_kept) = span("pruner=median (shipped)"), span(
        "pruner=percentile (shipped)")
    assert median_kept and percentile_kept and f"keep it at {median} and {percentile}" in page


def test_the_study_pages_other_figures_are_the_committed_results(study):
    """The counts and the lost trial's figures in the explanation of docs/studies/sweep_pruner.md."""
    results = committed()
    page = " ".join((REPO_ROOT / "docs" / "studies" / "sweep_pruner.md").read_text().split())
    a = results["analysis"]
    assert f"{len(a['curve']['candidates'])} `pruner=curve` settings" in page
    assert f"first study's {len(a['optuna']['candidates'])} Optuna settings" in page
    n_startup = a["optuna"]["chosen"]["overrides"]["n_startup_trials"]
    late = [k for k in a["optuna"]["heldout"]["seeds"] if a["unpruned"][k]["best_trial"] >= n_startup]
    assert f"on {len(late)} of the {len(a['optuna']['heldout']['seeds'])} held-out sweeps the unpruned pick came after" \
           f" the {n_startup} startup trials" in page
    early = [r for r in a["curve"]["candidates"] if r["overrides"]["min_budget_share"] <= 0.3]
    assert all(not r["keeps_best"] for r in early if r["overrides"]["tolerance"] > -4)
    ratios = [s["g_steps_ratio"] for r in early if r["keeps_best"] for s in r["seeds"].values()]
    assert f"({100 * min(ratios):.0f}-{100 * max(ratios):.0f} % of the G steps on the selection seeds)" in page

    # digits seed 2: the best trial the chosen curve setting cut, its values, projection and the incumbent
    lost = a["curve"]["heldout"]["seeds"]["digits/2"]
    best = lost["unpruned_best_trial"]
    cut = lost["pruned_at"][str(best)]
    assert cut == 400 and lost["best_trial"] != best
    trials = results["records"]["digits"]["2"]
    values = [e["value"] for e in trials[best]["evaluations"]]
    quoted = ", ".join(f"{v:.3f}" for v in values[:cut // 100])
    chosen = a["curve"]["chosen"]["overrides"]
    pruner = CurvePruner(budget_g_steps=800, **chosen)
    end = pruner.projection([(e["g_step"], e["value"]) for e in trials[best]["evaluations"]], cut, 800)["optimistic"]
    incumbent = min(e["value"] for t in trials[:best] for e in t["evaluations"]
                    if e["g_step"] <= (lost["pruned_at"][str(t["spec"]["trial"])] or 800))
    assert (f"read {quoted} at G steps 100-{cut}, projected to {end:.2g} at G step 800, more than 2 x the incumbent's "
            f"{incumbent:.2g}; it went on to {min(values):.2g}, the sweep's best") in page
    import math

    slope = lambda a, b: math.log(values[b // 100 - 1] / values[a // 100 - 1]) / math.log(b / a)  # noqa: E731
    assert (f"a log-log slope of {slope(100, 200):.1f} between G steps 100 and 200 and of {slope(400, 800):.1f} "
            "between 400 and 800") in page
    timing = results["timing"]
    assert (f"median trial {timing['ring']['trial_wall_s_median']:.0f} s ring, "
            f"{timing['digits']['trial_wall_s_median']:.0f} s digits") in page

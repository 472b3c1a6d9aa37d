"""scripts/early_stopping_study.py: its pairing, its arithmetic, and a quick study checked against its runs' files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_study():
    spec = importlib.util.spec_from_file_location("early_stopping_study", REPO_ROOT / "scripts" / "early_stopping_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = load_study()


def test_plan_pairs_each_run_with_and_without_early_termination():
    runs = study.plan(["digits", "ring"], ["r1", "l2", "lecam"], [0, 1], quick=False)
    assert len(runs) == 2 * 3 * 2 * 2
    for with_es, without in zip(runs[::2], runs[1::2]):
        assert with_es.early_stopping and not without.early_stopping
        assert with_es.overrides[0] == "early_stopping=default" and without.overrides[0] == "early_stopping=none"
        # Same seed, regularizer, budget and FID cadence on both sides: only the stopping differs.
        assert with_es.overrides[1:] == without.overrides[1:]
        assert f"seed={with_es.seed}" in without.overrides
    budgets = {r.setup: r.overrides for r in runs}
    assert "max_g_steps=10000" in budgets["digits"] and "max_g_steps=5000" in budgets["ring"]
    assert "max_g_steps=123" in study.plan(["ring"], ["r1"], [0], quick=False, max_g_steps=123)[0].overrides
    # experiment=ring tunes r1's weight; with regularizer=l2 the preset still composes, no workaround needed.
    ring_l2 = study.plan(["ring"], ["l2"], [0], quick=False)[0].overrides
    assert "regularizer=l2" in ring_l2 and not any(o.startswith("~") for o in ring_l2)


def _run(name: str, g_steps: int, history: list, eval_s: float, **extra) -> dict:
    best_step, best = min(history, key=lambda h: h[1])
    setup, reg, seed, kind = name.split("-")
    return {"name": name, "setup": setup, "regularizer": reg, "seed": int(seed[1:]), "early_stopping": kind == "es",
            "status": "completed", "stop_reason": "max_steps", "g_steps": g_steps, "best_fid": best,
            "best_fid_step": best_step, "fid_history": history, "fid_evals": len(history), "fid_eval_time_s": eval_s,
            **extra}


def test_pair_and_aggregate_arithmetic():
    full = [[100 * i, 10.0 / i] for i in range(1, 31)]  # best 1/3 at the last evaluation (G step 3000)
    without = _run("ring-r1-s0-full", 3000, full, 3.0)
    with_es = _run("ring-r1-s0-es", 1200, full[:12], 1.2, status="stopped_early", stop_reason="fid_plateau")
    pair = study.pair_result(with_es, without)
    assert pair["g_steps_saved"] == pytest.approx(0.6)
    assert pair["best_fid_gap"] == pytest.approx((10 / 12) / (10 / 30) - 1)
    assert pair["oracle_g_steps_saved"] == 0.0 and pair["same_run_until_stop"]
    assert not study.pair_result(dict(with_es, fid_history=[[100, 9.0]]), without)["same_run_until_stop"]

    other = dict(pair, g_steps_saved=0.2, best_fid_gap=0.01, g_steps_with_es=2400, oracle_g_steps_saved=0.5)
    total = study.aggregate([pair, other], [with_es, without], max_gap=0.05, min_saved=0.4)
    assert total["g_steps_saved_mean"] == pytest.approx(0.4) and total["g_steps_saved_median"] == pytest.approx(0.4)
    assert total["g_steps_saved_total"] == pytest.approx(1 - 3600 / 6000)
    assert total["best_fid_gap_median"] == pytest.approx((pair["best_fid_gap"] + 0.01) / 2)
    assert total["best_fid_gap_max"] == pytest.approx(pair["best_fid_gap"])
    assert total["pairs_within_gap"] == 1 and total["pairs_meeting_target"] == 0
    assert total["fid_eval_s_per_eval"] == pytest.approx(4.2 / 42)
    assert total["target_met"] is False  # median gap 75 % > 5 %
    # pair: full run ends on its best (last 1/3 = best 1/3); other: last FID 0.5 > best 1/3, and ES best 0.4 < 0.5
    other.update(last_fid_without=0.5, best_fid_with_es=0.4)
    pair["last_fid_without"] = without["fid_history"][-1][1]
    counts = study.aggregate([pair, other], [], max_gap=0.05, min_saved=0.4)
    assert counts["pairs_full_last_worse_than_its_best"] == 1 and counts["pairs_es_best_better_than_full_last"] == 1
    good = study.aggregate([dict(pair, best_fid_gap=0.0)], [], max_gap=0.05, min_saved=0.4)
    assert good["target_met"] is True and good["pairs_meeting_target"] == 1 and good["fid_eval_s_per_eval"] is None


def test_modes_at_reads_the_coverage_history():
    coverage = {"num_modes": 8, "history": [[100, 5, 0.2], [200, 8, 0.4]]}
    assert study.modes_at(coverage, 200) == "8/8" and study.modes_at(coverage, 100) == "5/8"
    assert study.modes_at(coverage, 300) is None and study.modes_at(None, 200) is None
    assert study.modes_at(coverage, None) is None


def test_quick_study_reports_what_its_runs_wrote(tmp_path):
    out, work = tmp_path / "out", tmp_path / "runs"
    # --jobs 2: the pair's two runs at once; the report must still pair them and keep the plan's order.
    assert study.main(["--quick", "--setups", "ring", "--regularizers", "r1", "--seeds", "0", "--threads", "1",
                       "--jobs", "2", "--out", str(out), "--work", str(work)]) == 0
    report = json.loads((out / "early_stopping_study.json").read_text())
    assert report["quick"] and report["machine"]["cores"] and report["command"].startswith("python scripts/")
    assert {"pairs", "by_setup", "overall", "runs", "target", "wall_time_s", "date"} <= set(report)
    (pair,) = report["pairs"]
    with_es = json.loads((work / "ring-r1-s0-es" / "summary.json").read_text())
    without = json.loads((work / "ring-r1-s0-full" / "summary.json").read_text())
    # --quick's stopping rule makes the run with early termination stop before the budget.
    assert without["g_steps"] == 60 and without["early_termination"] is None
    assert with_es["status"] == "stopped_early" and with_es["stop_reason"] == "fid_plateau" == pair["stop_reason_with_es"]
    assert pair["g_steps_with_es"] == with_es["g_steps"] < 60 and pair["g_steps_without"] == 60
    assert pair["g_steps_saved"] == pytest.approx(1 - with_es["g_steps"] / 60) and pair["g_steps_saved"] > 0
    assert pair["best_fid_with_es"] == with_es["best_fid"] and pair["best_fid_without"] == without["best_fid"]
    assert pair["best_fid_gap"] == pytest.approx(with_es["best_fid"] / without["best_fid"] - 1)
    assert pair["oracle_g_steps_saved"] == pytest.approx(1 - without["best_fid_step"] / 60)
    # Same seed: until the stop both runs are one run (same FIDs at the same G steps).
    assert pair["same_run_until_stop"]
    assert [r["name"] for r in report["runs"]] == ["ring-r1-s0-es", "ring-r1-s0-full"]
    # The ring's mode coverage at each run's best-FID step, from its summary.json.
    coverage = {step: modes for step, modes, _ in without["mode_coverage"]["history"]}
    assert pair["modes_at_best_without"] == f"{coverage[without['best_fid_step']]}/8"
    assert with_es["fid_history"] == without["fid_history"][:len(with_es["fid_history"])]
    evals = len(with_es["fid_history"]) + len(without["fid_history"])
    assert report["overall"]["fid_eval_s_per_eval"] == pytest.approx(
        (with_es["fid_eval_time_s"] + without["fid_eval_time_s"]) / evals)
    assert report["overall"]["g_steps_saved_median"] == pytest.approx(pair["g_steps_saved"])
    # Replaying the FID rule (the quick settings) on the full run's history stops where the real callback stopped.
    replayed = study.replay_fid_plateau(without["fid_history"], 60, patience=2, min_delta=0.5, window=3,
                                        warmup_g_steps=0)
    assert replayed["g_steps"] == with_es["g_steps"] and replayed["best_fid"] == with_es["best_fid"]
    assert replayed["best_fid_gap"] == pytest.approx(pair["best_fid_gap"])
    table = (out / "early_stopping_study.md").read_text()
    assert "| ring | r1 | 0 |" in table and report["command"] in table
    assert report["reused_runs"] == 0 and pair["last_fid_without"] == without["fid_history"][-1][1]
    # --resume reads the finished runs instead of training again, and reports the same pair.
    assert study.main(["--quick", "--setups", "ring", "--regularizers", "r1", "--seeds", "0", "--resume",
                       "--out", str(out), "--work", str(work)]) == 0
    again = json.loads((out / "early_stopping_study.json").read_text())
    assert again["reused_runs"] == 2 and again["pairs"] == report["pairs"]
    assert "2 runs reused" in (out / "early_stopping_study.md").read_text()

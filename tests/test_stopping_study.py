"""studies/stopping_study.py (v6-v8, ground truth): its grading arithmetic, the replay through the product's config
(at the product's cadence, prepared as a fine-tune where the run is one, handing back the best-of confirmation's
winner), the monitor's cost, and the committed study: its histories replayed give its stop steps, and its targets file
has the issue's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script
from lightning_regan.stopping import normalize_reason

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "studies" / "results"
TARGET_KEYS = ("signal_spearman_min_setup_median", "lag_median", "lag_max", "gap_within_share", "gap_median",
               "peaked_stopped_share", "diverging_within_one_share", "monitor_cost_share", "command", "date", "seeds")


def load_study():
    return load_script(REPO_ROOT / "studies" / "stopping_study.py", "stopping_study")


study = load_study()


def scripted_run(signal, truth, setup="digits", kind="healthy", every=100, noise=0.0, metric="val/fid"):
    rows = [{"g_step": (i + 1) * every, "metrics": {metric: s}, "truth": t} for i, (s, t) in enumerate(zip(signal, truth))]
    spec = {"setup": setup, "seed": 0, "run_dir": "/tmp/unused", "max_g_steps": len(rows) * every, "every": every,
            "truth_samples": 10}
    return {"spec": spec, "setup": setup, "seed": 0, "kind": kind, "max_g_steps": len(rows) * every,
            "g_steps": len(rows) * every, "every": every, "evaluations": rows, "grader_noise": noise,
            "divergence_g_step": None, "first_exploded_g_step": None, "divergence_warmup": 0}


def test_truth_reference_oracle_peak_and_noise():
    # Truth best 10.0 at G step 600; within 5 % (<= 10.5): first at G step 400; the run ends 30 % worse: peaked.
    run = scripted_run([0] * 8, [40, 20, 15, 10.4, 11, 10.0, 12, 13])
    ref = study.truth_reference(run)
    assert (ref["best"], ref["best_g_step"], ref["oracle_g_step"], ref["peaked"]) == (10.0, 600, 400, True)
    # A grader noise of 5.0 widens the tolerance: G step 200 (20 > 15) is still out, 300 (15) is in; not peaked.
    ref = study.truth_reference({**run, "grader_noise": 5.0})
    assert ref["oracle_g_step"] == 300 and not ref["peaked"] and ref["flattened"]


def test_grade_reads_the_truth_not_the_signal():
    # The signal's best (G step 200) is the truth's worst late value: graded on the truth, not within.
    run = scripted_run([5, 1, 3, 4], [9, 8, 2, 2])
    graded = study.grade(run, {"stop_g_step": 400, "reason": "max_steps", "handed_index": 1, "metric": "val/fid"})
    assert graded["handed_truth"] == 8 and graded["best_truth"] == 2 and graded["gap"] == pytest.approx(3.0)
    assert graded["within"] is False and graded["lag"] == pytest.approx(400 / 300)


def test_replay_uses_the_products_rules_and_hands_over_the_best_so_far():
    # digits' product rule is early_stopping=default (on val/mmd since v7): a flat tail stops it early.
    signal = [400, 100, 40, 20, 12, 10.4, 11, 10.0] + [10.5, 10.2, 10.6, 10.3] * 10
    run = scripted_run(signal, signal, every=200, metric="val/mmd")
    out = study.replay(run, "product")
    assert out["metric"] == "val/mmd" and out["reason"] == "plateau" and out["stop_g_step"] < run["max_g_steps"]
    assert run["evaluations"][out["handed_index"]]["g_step"] == 1600  # the best value so far (10.0)
    # The candidates on val/fid read it; the product (images and the ring) reads val/mmd: a run logging only val/fid
    # never stops on it.
    fid_only = scripted_run(signal, signal, every=200)
    assert study.replay(fid_only, "trend/fid")["stop_g_step"] == out["stop_g_step"]
    for setup in ("digits", "ring"):
        only = scripted_run(signal, signal, setup=setup, every=100)
        assert study.replay(only, "product")["metric"] == "val/mmd"
        assert study.replay(only, "product")["reason"] == "max_steps"


def test_monitor_share_at_the_default_cadence():
    # 40 evaluations at the study's cadence (100) cost 10 s beside 90 s of training: 10 %. The setup's own cadence
    # (images: 200) halves the evaluations: 5 s of 95 s.
    run = {"monitor_s": 10.0, "fit_wall_s": 130.0, "recorder_s": 30.0, "g_steps": 4000,
           "evaluations": [{"g_step": 100 * (i + 1)} for i in range(40)]}
    assert study.monitor_share(run) == pytest.approx(0.10)
    assert study.monitor_share(run, 200) == pytest.approx(5 / 95)
    assert study.default_cadence("digits") == 200 and study.default_cadence("ring") == 100


def test_finetune_replay_prepares_the_rules_as_a_fine_tune(monkeypatch):
    """A fine-tune's record (init_from, evaluated at G step 0) is replayed with the states a fine-tune's fit prepares:
    EarlyTermination.prepare_states(budget, initialized_from) with its checkpoint; a run from scratch with None."""
    from lightning_regan.callbacks import EarlyTermination

    calls = []
    original = EarlyTermination.prepare_states

    def spy(self, budget_g_steps, initialized_from=None):
        calls.append((budget_g_steps, initialized_from))
        original(self, budget_g_steps, initialized_from)

    monkeypatch.setattr(EarlyTermination, "prepare_states", spy)
    values = [0.30, 0.28, 0.27, 0.26, 0.27, 0.26, 0.27, 0.26, 0.27, 0.26, 0.27]
    run = scripted_run(values, values, setup="finetune", every=100, metric="val/mmd")
    for i, row in enumerate(run["evaluations"]):
        row["g_step"] = 100 * i  # G step 0: the fine-tune's starting generator
    run["max_g_steps"] = run["g_steps"] = 1000
    run["init_from"] = "/tmp/pretrain/last.ckpt"
    study.replay(run, "product")
    assert calls[-1] == (1000, "/tmp/pretrain/last.ckpt")
    states = study.candidate_rules(run, "product").states
    trained = [s.starts_trained for s in states.values() if hasattr(s, "starts_trained")]
    assert trained and all(trained)
    study.replay({**run, "init_from": None}, "product")
    assert calls[-1] == (1000, None)
    assert not any(s.starts_trained for s in study.candidate_rules(run, "product").states.values()
                   if hasattr(s, "starts_trained"))
    # An oracle at G step 0 counts as the first evaluation after it: the lag stays a ratio of G steps trained.
    flat = scripted_run([1, 1, 1], [1.0, 1.0, 1.0], setup="finetune", every=100)
    for i, row in enumerate(flat["evaluations"]):
        row["g_step"] = 100 * i
    graded = study.grade(flat, {"stop_g_step": 200, "reason": "plateau", "handed_index": 0, "metric": "val/fid"})
    assert graded["oracle_g_step"] == 0 and graded["lag"] == pytest.approx(2.0)


def test_confirmation_replay_hands_back_the_top_3_winner():
    """BestGenerator(top_k=3) re-scored with 4x the samples: the winner among the 3 best logged values up to the stop,
    by the recorded confirmation score; a 4th-best with the best confirmation score is not a candidate."""
    logged = [5.0, 3.0, 2.0, 2.5, 4.0, 1.0]       # top 3 up to G step 500: 300 (2.0), 400 (2.5), 200 (3.0)
    confirm = [0.5, 2.4, 2.2, 2.1, 1.0, 0.1]       # 400 wins among them; 100 (0.5) and 500 (1.0) are not candidates
    truth = [9.0, 8.0, 7.0, 3.0, 5.0, 1.0]
    run = scripted_run(logged, truth, metric="val/mmd")
    for row, c in zip(run["evaluations"], confirm):
        row["confirm"] = {"val/mmd": c}
    seen = list(range(5))  # stopped at G step 500
    assert study.confirmed_winner(run["evaluations"], seen, "val/mmd", "min") == (3, True)
    # mode max: 5.0, 4.0, 3.0 (G steps 100, 500, 200) re-scored 0.5, 1.0, 2.4: the highest, 200, wins
    assert study.confirmed_winner(run["evaluations"], seen, "val/mmd", "max") == (1, True)
    graded = study.grade(run, {"stop_g_step": 500, "reason": "plateau", "handed_index": 2, "confirmed_index": 3,
                               "confirmed": True, "metric": "val/mmd"})
    assert (graded["handed_g_step"], graded["handed_truth"], graded["best_so_far_truth"]) == (400, 3.0, 7.0)
    assert graded["gap"] == pytest.approx(2.0) and graded["best_so_far_gap"] == pytest.approx(6.0)
    s = study.summarize([graded], [run])
    assert s["gap_median"] == pytest.approx(2.0) and s["best_so_far_gap_median"] == pytest.approx(6.0)
    # Without confirmation scores (a v7 record) or with one candidate: the best so far, unconfirmed.
    plain = scripted_run(logged, truth, metric="val/mmd")
    assert study.confirmed_winner(plain["evaluations"], seen, "val/mmd", "min") == (2, False)
    assert study.confirmed_winner(run["evaluations"], [4], "val/mmd", "min") == (4, False)
    # Through the replay: a run that never stops hands back the confirmation's winner over the whole run.
    out = study.replay(run, "plateau/mmd")
    assert out["stop_g_step"] == 600 and out["confirmed"]
    assert (out["handed_index"], out["confirmed_index"]) == (5, 5)  # 1.0 is the best and the confirmation's


def test_replay_evaluates_the_rule_at_the_products_cadence():
    """The study records fmnist_600 every 100 G steps; a user's run evaluates every 200 (the setup's own config): the
    rule and the hand-back see only those evaluations. The fine-tune's G step 0 is kept."""
    assert study.default_cadence("fmnist_600") == 200 and study.default_cadence("finetune") == 100
    signal = [50, 40, 1, 30, 30, 30, 30, 30, 30, 30]  # the best logged value at G step 300: not a product evaluation
    run = scripted_run(signal, signal, setup="fmnist_600", every=100, metric="val/mmd")
    assert study.product_rows(run) == [1, 3, 5, 7, 9]
    assert study.product_rows(run, 100) == list(range(10))
    out = study.replay(run, "product")
    assert out["stop_g_step"] % 200 == 0 and run["evaluations"][out["handed_index"]]["g_step"] % 200 == 0
    assert run["evaluations"][study.replay(run, "product", 100)["handed_index"]]["g_step"] == 300
    tune = scripted_run([1] * 5, [1] * 5, setup="finetune", every=50)
    for i, row in enumerate(tune["evaluations"]):
        row["g_step"] = 50 * i
    assert [tune["evaluations"][i]["g_step"] for i in study.product_rows(tune)] == [0, 100, 200]


def test_monitor_cost_leaves_out_the_recorder_and_the_confirmation():
    """The truth and the confirmation's re-scoring (recorder_s, confirm_s within it) are study-only: the share is the
    monitor's time over training plus monitor; at the default cadence a fine-tune's G step 0 still counts."""
    run = {"monitor_s": 10.0, "fit_wall_s": 160.0, "recorder_s": 60.0, "confirm_s": 25.0, "g_steps": 1000,
           "evaluations": [{"g_step": 50 * i} for i in range(21)]}
    assert study.monitor_share(run) == pytest.approx(10 / 100)
    monitor = 10.0 * 11 / 21  # 0, 100, ..., 1000 at the default cadence of 100
    assert study.monitor_share(run, 100) == pytest.approx(monitor / (90 + monitor))


def test_runs_of_an_earlier_record_are_reused_and_no_train_lists_the_missing(tmp_path):
    """--with-runs takes an earlier record's runs as they are (v7's seeds 10-17 in v8); --no-train trains nothing and
    names the runs still missing; the record keeps its seed sets, which a replay reads back."""
    values = [0.5, 0.3, 0.2, 0.15, 0.12, 0.1]
    earlier = {**scripted_run(values, values, setup="ring", every=100, metric="val/mmd"), "seed": 10,
               "monitor_s": 1.0, "fit_wall_s": 10.0, "recorder_s": 5.0}
    path = tmp_path / "v7.json"
    path.write_text(json.dumps({"runs": [earlier]}))
    out = tmp_path / "out"
    assert study.main(["--no-train", "--setups", "ring", "--seeds", "10", "18", "--work", str(tmp_path / "w"),
                       "--with-runs", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "stopping_study.json").read_text())
    assert [(r["setup"], r["seed"]) for r in report["runs"]] == [("ring", 10)] and report["missing"] == ["ring-s18"]
    assert report["seeds"] == {"selection": list(study.SELECTION_SEEDS), "held_out": list(study.HELD_OUT_SEEDS)}
    assert not (tmp_path / "w" / "ring-s18").exists()
    assert study.seed_sets({"targets": {"seeds": {"selection": [10], "held_out": [15]}}}) == ((10,), (15,))


def test_spearman_and_summary_shares():
    assert study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.spearman([1, 2], [1, 2]) is None
    run = scripted_run([3, 2, 1, 1, 1, 1], [3, 2, 1, 1, 1, 1])  # flat from G step 300 of 600: lag counts
    g = study.grade(run, {"stop_g_step": 600, "reason": "max_steps", "handed_index": 2, "metric": "val/fid"})
    s = study.summarize([g], [run])
    assert s["gap_within_share"] == 1.0 and s["gap_median"] == 0.0 and s["lag_median"] == pytest.approx(2.0)
    # Still improving past half the budget: no lag is counted for the run.
    late = scripted_run([3, 2, 1, 1], [3, 2, 1, 1])
    g = study.grade(late, {"stop_g_step": 400, "reason": "max_steps", "handed_index": 2, "metric": "val/fid"})
    assert study.summarize([g], [late])["lag_runs"] == 0


@pytest.mark.slow  # a study harness end to end (tens of seconds): the slow tier
def test_quick_study_end_to_end(tmp_path):
    assert study.main(["--quick", "--setups", "ring", "diverging", "--jobs", "2", "--work", str(tmp_path / "w"),
                       "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "stopping_study.json").read_text())
    assert {r["setup"] for r in report["runs"]} == {"ring", "diverging"}
    ring = next(r for r in report["runs"] if r["setup"] == "ring")
    row = ring["evaluations"][0]
    assert {"val/fid", "val/mmd"} <= set(row["metrics"]) and 0.0 <= row["hq_fraction"] <= 1.0
    targets = json.loads((tmp_path / "o" / "stopping_targets.json").read_text())
    assert set(TARGET_KEYS) <= set(targets)


COMMITTED = RESULTS / "stopping_study.json"


def test_committed_study_replays_to_its_stop_steps_and_targets_have_the_keys():
    report = json.loads(COMMITTED.read_text())
    chosen = report["analysis"]["chosen"]
    for name in (chosen, "product"):
        for run, graded in zip(report["runs"], report["analysis"]["graded"][name]):
            out = study.replay(run, name)
            # The records say "fid_plateau", the rules' reason before it was renamed "plateau".
            assert (out["stop_g_step"], out["reason"]) == (graded["stop_g_step"], normalize_reason(graded["reason"])), \
                (name, run["setup"])
    targets = json.loads((RESULTS / "stopping_targets.json").read_text())
    assert set(TARGET_KEYS) <= set(targets) and targets == report["targets"]

"""studies/finetune_study.py end to end in its --quick mode (sklearn digits 0-4 -> 5-9, a few G steps, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script

STUDY = Path(__file__).resolve().parents[1] / "studies" / "finetune_study.py"
TARGET_KEYS = {"finetune_over_scratch_best", "finetune_stop_lag", "finetune_gap", "freezed_effect",
               "diffaugment_effect"}


def load_study():
    return load_script(STUDY, "_finetune_study")


def test_quick_study_pretrains_once_fine_tunes_every_condition_and_writes_the_target_keys(tmp_path):
    study = load_study()
    args = ["--quick", "--seeds", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert study.main(args) == 0
    report = json.loads((tmp_path / "out" / "finetune_study.json").read_text())
    assert [r["condition"] for r in report["runs"]] == list(study.CONDITIONS)
    checkpoint = report["pretrain"]["checkpoint"]
    for run in report["runs"]:
        assert run["g_steps"] == 12 and run["train_images"] == 200
        # a fine-tune's starting generator is evaluated too, at G step 0
        assert [e["g_step"] for e in run["evaluations"]] == ([6, 12] if run["condition"] == "scratch" else [0, 6, 12])
        assert all(e["truth"] > 0 and "val/mmd" in e["metrics"] for e in run["evaluations"])
        if run["condition"] == "scratch":
            assert run["init_from"] is None
        else:
            assert run["init_from"]["path"] == checkpoint and run["init_from"]["g_steps"] == 12
    graded = report["graded"]
    assert "lag" not in graded["scratch-s0"] and graded["finetune-s0"]["stop_g_step"] in (6, 12)
    targets = json.loads((tmp_path / "out" / "finetune_targets.json").read_text())
    assert TARGET_KEYS <= set(targets) and all(targets[k] is not None for k in TARGET_KEYS)
    best = {r["condition"]: graded[r["name"]]["best_truth"] for r in report["runs"]}
    assert targets["finetune_over_scratch_best"] == pytest.approx(best["finetune"] / best["scratch"])
    assert targets["freezed_effect"] == pytest.approx(best["finetune_freezed"] / best["finetune"])
    assert "| `finetune_stop_lag` |" in (tmp_path / "out" / "finetune_study.md").read_text()
    # Started again, finished trainings are read back, not trained again.
    assert study.main([*args[:-1], str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "finetune_study.json").read_text())["runs"] == report["runs"]


def test_grade_finds_the_oracle_and_the_gap_of_the_generator_handed_back(monkeypatch):
    study = load_study()
    rows = [{"g_step": g, "truth": t, "metrics": {"val/mmd": m}} for g, t, m in
            ((50, 40.0, 0.5), (100, 20.0, 0.2), (150, 19.5, 0.3), (200, 30.0, 0.1))]
    run = {"condition": "finetune", "evaluations": rows, "grader_noise": 0.1, "max_g_steps": 200, "g_steps": 200}
    monkeypatch.setattr(study, "replay", lambda r: {"stop_g_step": 150, "reason": "metric_plateau",
                                                      "handed_index": 1, "metric": "val/mmd"})
    graded = study.grade(run)
    # best 19.5 at 150; within 5 % (0.975) first at G step 100 (20.0): the oracle; the stop at 150 lags 1.5x
    assert graded["best_truth"] == 19.5 and graded["oracle_g_step"] == 100 and graded["lag"] == 1.5
    assert graded["handed_truth"] == 20.0 and graded["gap"] == pytest.approx(0.5 / 19.5)


def test_the_guide_and_readme_quote_the_committed_results():
    repo = STUDY.parents[1]
    targets = json.loads((repo / "studies" / "results" / "finetune_targets.json").read_text())
    report = json.loads((repo / "studies" / "results" / "finetune_study.json").read_text())
    guide = (repo / "docs" / "finetuning.md").read_text().split("## What it buys: the study", 1)[1].split("\n## ", 1)[0]
    assert f"best truth {targets['finetune_over_scratch_best']:.2f}x that of training from scratch" in guide
    assert f"best truth {targets['diffaugment_effect']:.2f}x of the fine-tunes without it" in guide
    assert f"best truth {targets['freezed_effect']:.2f}x with D's stem frozen" in guide
    assert f"median lag {targets['finetune_stop_lag']:.2f}" in guide and f"gap {100 * targets['finetune_gap']:.1f} %" in guide
    assert all(targets["met"][k] == "met" for k in ("finetune_over_scratch_best", "finetune_stop_lag", "finetune_gap"))
    for condition, row in report["table"].items():  # the table's medians
        assert f"| {row['best_truth']:.1f} |" in guide, condition
    readme = (repo / "README.md").read_text()
    assert f"reached {targets['finetune_over_scratch_best']:.2f}x the best FID from scratch;" in readme

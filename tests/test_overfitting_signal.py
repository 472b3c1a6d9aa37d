"""studies/overfitting_signal.py: the runs it makes, the records it reads, and the committed result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "studies" / "results" / "overfitting_signal.json"


@pytest.fixture(scope="module")
def study():
    return load_script(REPO / "studies" / "overfitting_signal.py", "_overfitting_signal")


def test_runs_train_on_a_subset_with_both_monitors(study, tmp_path):
    args = study.overrides(64, "ada", tmp_path, max_g_steps=300, every=50, seed=3)
    assert "data.limit=64" in args and "augment=ada" in args and "callbacks=[fid,overfitting,summary]" in args
    assert "callbacks.fid.every_n_g_steps=50" in args and "early_stopping=none" in args and "seed=3" in args
    assert {limit for limit, _ in study.RUNS.values()} == {64, 1697}  # few images, and all but 100 of the digits


def test_record_pairs_gap_and_fid_by_g_step(study):
    summary = {"fid_history": [[10, 50.0], [20, 30.0], [30, 40.0]],
               "overfitting": {"history": [[10, 0.1, 0.0, 0.1, 0.2, None], [20, 0.5, 0.1, 0.4, -1.5, 0.2],
                                           [30, 1.0, -0.5, 1.5, -2.0, 0.5]]},
               "wall_time_s": 12.0}
    r = study.record("x", 64, "none", summary)
    assert [h["fid"] for h in r["history"]] == [50.0, 30.0, 40.0]
    assert [h["d_rv"] for h in r["history"]] == [None, 0.2, 0.5]
    assert (r["best_fid"], r["best_g_step"], r["last_fid"]) == (30.0, 20, 40.0)
    assert (r["gap_at_best"], r["gap_last"], r["rv_at_best"], r["rv_last"]) == (0.4, 1.5, 0.2, 0.5)
    text = study.markdown({"command": "c", "date": "d", "wall_s": 1.0, "machine": "m", "runs": [r],
                           "settings": {"max_g_steps": 30, "every": 10, "seed": 0}})
    assert "| x | 30.0 | 20 | 40.0 | 1.33 | 0.40 | 1.50 | 0.20 | 0.50 |" in text
    assert "- x: 10: 0.10 / - / 50.0, 20: 0.40 / 0.20 / 30.0" in text


@pytest.mark.skipif(not RESULT.is_file(), reason="no committed result")
def test_committed_result_shows_memorization_where_there_are_few_images():
    runs = {r["name"]: r for r in json.loads(RESULT.read_text())["runs"]}
    few, plenty = runs["digits_64-none"], runs["digits_1697-none"]
    assert few["gap_last"] > 1.0 and few["gap_last"] > few["history"][0]["d_gap"] + 1.0  # D learns its 64 images
    assert abs(plenty["gap_last"]) < few["gap_last"] / 4  # with 1,697 it cannot tell them from unseen digits
    for r in runs.values():
        assert r["best_fid"] == min(h["fid"] for h in r["history"]) and r["last_fid"] == r["history"][-1]["fid"]
    rv = [h["d_rv"] for h in few["history"]]
    assert rv == sorted(rv) and rv[-1] > 1.0  # r_v rises at every evaluation and passes 1: unseen digits score as fake
    for h in few["history"]:
        assert h["d_rv"] == pytest.approx(h["d_gap"] / (h["d_train"] - h["d_generated"]))


@pytest.mark.slow
def test_quick_study_end_to_end(study, tmp_path):
    assert study.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "overfitting_signal.json").read_text())
    assert [r["name"] for r in report["runs"]] == list(study.RUNS)
    assert all([h["g_step"] for h in r["history"]] == [20, 40] for r in report["runs"])
    assert "| digits_64-none |" in (tmp_path / "out" / "overfitting_signal.md").read_text()


@pytest.mark.skipif(not RESULT.is_file(), reason="no committed result")
def test_the_augmentation_guide_quotes_the_committed_result():
    guide = (REPO / "docs" / "augmentation.md").read_text()
    for r in json.loads(RESULT.read_text())["runs"]:
        row = (f"| {r['limit']:,} | {r['augment']} | {r['best_fid']:.1f} ({r['best_g_step']:,}) | {r['last_fid']:.1f} | "
               f"{r['gap_at_best']:.2f} | {r['gap_last']:.2f} | {r['rv_at_best']:.2f} | {r['rv_last']:.2f} |")
        assert row in guide, row
    runs = {r["name"]: r for r in json.loads(RESULT.read_text())["runs"]}
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"grew to {runs['digits_64-none']['gap_last']:.2f} on 64 digits as the FID turned back up, "
            f"{runs['digits_64-diffaugment']['gap_last']:.2f} with DiffAugment") in readme

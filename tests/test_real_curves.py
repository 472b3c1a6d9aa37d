"""studies/real_curves.py: the replay of stop configurations on public training curves, its grading, and the committed
record (re-run from ../shared/curves when present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]

study = load_script(REPO_ROOT / "studies" / "real_curves.py", "real_curves")
COMMITTED = REPO_ROOT / "studies" / "results" / "real_curves.json"


def _curve(cid, values, starts_from="scratch", every=10):
    return {"id": cid, "starts_from": starts_from, "x_unit": "kimg", "direction": "lower_is_better",
            "points": [(i * every, v) for i, v in enumerate(values)]}


def test_grading_arithmetic_on_a_curve_that_peaks():
    values = [100.0, 60.0, 40.0, 30.0, 20.0, 21.0, 30.0, 40.0]  # best 20 at x=40, then >= 5 % worse at the end
    row = study.replay(_curve("peak", values), "none")
    assert row["stop_x"] is None and row["stop_reason"] == "max_steps" and row["saving"] == 0.0
    assert row["best_x"] == 40 and row["handed_back_value"] == 20.0 and row["gap"] == 0.0
    assert row["oracle_x"] == 40 and row["oracle_saving"] == pytest.approx(30 / 70)
    assert row["peaked"] is True
    totals = study.totals([row])
    assert totals["within_share"] == 1.0 and totals["captured_share"] == 0.0 and totals["peaked_stopped_share"] == 0.0


def test_a_fine_tune_is_replayed_as_one():
    # Flat with 1 % noise from a trained start: the default decides on the fine-tune, never on the same curve from
    # scratch (no take-off).
    import random

    rng = random.Random(0)
    values = [10.0 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(40)]
    tuned = study.replay(_curve("ft", values, "trained"), "default")
    scratch = study.replay(_curve("sc", values, "scratch"), "default")
    assert tuned["stop_x"] is not None and tuned["gap"] < 0.05 and tuned["saving"] > 0.3
    assert scratch["stop_x"] is None


def test_cli_writes_the_report_and_targets(tmp_path):
    curves = [_curve("a", [100.0, 50.0, 30.0, 25.0, 24.0, 24.5, 24.2, 24.1, 24.3, 24.0, 24.2, 24.1] * 2),
              _curve("b", [10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 10.0, 10.1, 9.9, 10.0, 10.0, 9.9], "trained")]
    path = tmp_path / "curves.json"
    path.write_text(json.dumps(curves))
    assert study.main(["--curves", str(path), "--config", "default", "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "real_curves.json").read_text())
    assert [r["id"] for r in report["configs"]["default"]["curves"]] == ["a", "b"]
    targets = json.loads((tmp_path / "o" / "real_curves_targets.json").read_text())
    assert set(study.TARGETS) <= set(targets) and all("met" in targets[k] for k in study.TARGETS)
    assert "| default |" in (tmp_path / "o" / "real_curves.md").read_text()
    assert study.main(["--curves", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.skipif(not study.DEFAULT_CURVES.is_file(), reason="../shared/curves/curves.json is not beside the repo")
def test_committed_record_is_what_the_curves_give_today():
    committed = json.loads(COMMITTED.read_text())
    report = study.study(study.load_curves(study.DEFAULT_CURVES), list(committed["configs"]))
    for config, part in committed["configs"].items():
        assert report["configs"][config]["totals"] == part["totals"], config
        assert report["configs"][config]["curves"] == part["curves"], config


def test_committed_held_out_record_is_what_the_held_out_curves_give_today():
    """studies/data/heldout_curves.json (curves found after the rule was chosen) replays to the committed record."""
    path = REPO_ROOT / "studies" / "data" / "heldout_curves.json"
    committed = json.loads((REPO_ROOT / "studies" / "results" / "real_curves_heldout" / "real_curves.json").read_text())
    assert committed["source"] == "studies/data/heldout_curves.json"
    curves = study.load_curves(path)
    assert len(curves) == 20 and all(c["source"] and c["points"] for c in curves)
    report = study.study(curves, list(committed["configs"]))
    for config, part in committed["configs"].items():
        assert report["configs"][config]["totals"] == part["totals"], config

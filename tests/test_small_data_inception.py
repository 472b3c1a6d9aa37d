"""studies/small_data_inception.py: the real-Inception confirmation end to end in --quick mode (digits, 8 G steps,
16 images a side), through regan-train and regan-eval; and its committed result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script
from test_fid_inception import _find

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "studies" / "small_data_inception.py"


def load():
    return load_script(SCRIPT, "_small_data_inception")


def test_the_runs_are_the_small_data_studys():
    """Same networks, batch and regularizer as studies/small_data_study.py, 600 images, and a best checkpoint."""
    overrides = load().train_overrides("fashion_mnist", "diffaugment", Path("/tmp/x"), 1500, 250, 0)
    for item in ("data.limit=600", "data.batch_size=32", "model.generator.channels=8", "regularizer=none",
                 "augment=diffaugment", "max_g_steps=1500", "early_stopping=none"):
        assert item in overrides
    assert any(o.startswith("callbacks=") and "checkpoint" in o for o in overrides)


@pytest.mark.slow
def test_quick_confirmation_scores_both_runs_with_inception(tmp_path):
    weights = _find("weights")
    if weights is None:
        pytest.skip("Inception weights not available offline (run `regan-fid-weights` once)")
    assert load().main(["--quick", "--data", "digits", "--weights", str(weights), "--work", str(tmp_path / "w"),
                        "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "small_data_inception.json").read_text())
    assert set(report["runs"]) == {"none", "diffaugment"}
    for run in report["runs"].values():
        assert run["inception_fid"] > 0 and run["g_steps"] == 8 and run["best_g_step"] in (4, 8)
    none, diff = (report["runs"][a]["inception_fid"] for a in ("none", "diffaugment"))
    assert report["inception_fid_reduction_diffaugment"] == pytest.approx(1 - diff / none)


def test_committed_confirmation():
    path = REPO / "studies" / "results" / "small_data_inception.json"
    if not path.is_file():
        pytest.skip("no committed confirmation")
    report = json.loads(path.read_text())
    assert report["data"] == "fashion_mnist" and report["data_limit"] == 600 and report["num_samples"] >= 1000
    assert report["command"].startswith("python studies/small_data_inception.py")
    none, diff = (report["runs"][a]["inception_fid"] for a in ("none", "diffaugment"))
    assert report["inception_fid_reduction_diffaugment"] == pytest.approx(1 - diff / none)

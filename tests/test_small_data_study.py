"""studies/small_data_study.py end to end in its --quick mode (digits, a few G steps, in-process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
STUDY = Path(__file__).resolve().parents[1] / "studies" / "small_data_study.py"
TARGET_KEYS = {"best_fid_reduction_diffaugment_600", "best_fid_reduction_ada_600", "noaug_last_over_best_600",
               "aug_last_over_best_600", "full_data_best_ratio", "ada_p_600", "ada_p_full", "step_ratio_diffaugment",
               "step_ratio_ada", "command", "date", "seeds"}


def load_study():
    return load_script(STUDY, "_small_data_study")


def test_quick_study_grades_every_augment_and_writes_the_target_keys(tmp_path):
    study = load_study()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"step_ratio_diffaugment": 1.1, "step_ratio_ada": 1.2}))
    assert study.main(["--quick", "--seeds", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                       "--bench", str(bench)]) == 0
    report = json.loads((tmp_path / "out" / "small_data_study.json").read_text())
    assert [r["augment"] for r in report["runs"]] == ["none", "diffaugment", "ada"]
    for run in report["runs"]:
        assert run["train_images"] == 200 and run["g_steps"] == 12 and [h["g_step"] for h in run["history"]] == [6, 12]
        assert run["best_fid"] > 0 and run["best_fid"] <= run["last_fid"]
        assert (run["final_ada_p"] is not None) == (run["augment"] == "ada")
        for row in run["history"]:  # D's overfitting gap at every evaluation
            assert math.isfinite(row["d_gap"]) and abs(row["d_gap"] - (row["d_train"] - row["d_heldout"])) < 1e-12
        assert run["gap_last"] == run["history"][-1]["d_gap"]
    assert set(report["table"]) == {"digits_200/none", "digits_200/diffaugment", "digits_200/ada"}
    targets = json.loads((tmp_path / "out" / "small_data_targets.json").read_text())
    assert TARGET_KEYS <= set(targets) and targets["step_ratio_ada"] == 1.2
    assert "| digits_200 | ada |" in (tmp_path / "out" / "small_data_study.md").read_text()
    # started again, finished runs are read back, not trained again
    assert study.main(["--quick", "--seeds", "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out2"),
                       "--bench", str(bench)]) == 0
    assert json.loads((tmp_path / "out2" / "small_data_study.json").read_text())["runs"] == report["runs"]


def test_targets_from_medians():
    study = load_study()
    table = {}
    for data, base in (("mnist_600", 10.0), ("fmnist_600", 20.0)):
        table[f"{data}/none"] = {"best_fid": base, "last_over_best": 1.5, "final_ada_p": None}
        table[f"{data}/diffaugment"] = {"best_fid": base * 0.6, "last_over_best": 1.05, "final_ada_p": None}
        table[f"{data}/ada"] = {"best_fid": base * (0.5 if data == "mnist_600" else 0.8), "last_over_best": 1.2,
                                "final_ada_p": 0.4}
    table["fmnist_60k/none"] = {"best_fid": 5.0, "final_ada_p": None}
    table["fmnist_60k/diffaugment"] = {"best_fid": 5.1, "final_ada_p": None}
    table["fmnist_60k/ada"] = {"best_fid": 5.5, "final_ada_p": 0.1}
    t = study.targets(table, None)
    assert abs(t["best_fid_reduction_diffaugment_600"] - 0.4) < 1e-9
    assert abs(t["best_fid_reduction_ada_600"] - 0.2) < 1e-9  # the smaller over the two datasets
    assert t["noaug_last_over_best_600"] == 1.5 and t["aug_last_over_best_600"] == 1.2
    assert abs(t["full_data_best_ratio"] - 1.1) < 1e-9 and t["ada_p_600"] == 0.4 and t["ada_p_full"] == 0.1
    assert t["step_ratio_ada"] is None
    assert study._met("full_data_best_ratio", 1.1) == "NOT met" and study._met("ada_p_600", 0.4) == "met"


def test_a_run_does_not_depend_on_whether_the_grader_classifier_was_cached(tmp_path, monkeypatch):
    """The first run of a study trains the grader's classifier, later ones load it: both must train alike."""
    study = load_study()
    monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp_path / "cache"))  # cold: this run trains the classifier
    spec = {"name": "r", "dataset": "digits_200", "data": "digits", "limit": 200, "augment": "none", "seed": 0,
            "run_dir": str(tmp_path / "a"), "data_root": str(tmp_path), "quick": True, **study.QUICK}
    cold = study.run_one(spec)
    warm = study.run_one({**spec, "run_dir": str(tmp_path / "b")})  # the classifier is cached now
    assert [h["fid"] for h in cold["history"]] == [h["fid"] for h in warm["history"]]
    assert [h["d_gap"] for h in cold["history"]] == [h["d_gap"] for h in warm["history"]]


def test_the_augmentation_guide_quotes_the_committed_study():
    report = json.loads((REPO / "studies" / "results" / "small_data_study.json").read_text())
    table, guide = report["table"], (REPO / "docs" / "augmentation.md").read_text()
    best = {key: f"{row['best_fid']:,.0f}" for key, row in table.items()}
    assert f"{best['mnist_600/diffaugment']} vs {best['mnist_600/none']} on MNIST" in guide
    assert f"{best['fmnist_600/diffaugment']} vs {best['fmnist_600/none']} on Fashion-MNIST" in guide
    assert f"({best['fmnist_60k/diffaugment']} vs {best['fmnist_60k/none']}:" in guide
    assert f"({best['mnist_600/ada']} vs {best['mnist_600/none']})" in guide
    assert f"its p reaches {table['mnist_600/ada']['final_ada_p']:.2f}" in guide
    reduction = report["targets"]["best_fid_reduction_diffaugment_600"]
    assert f"by {reduction:.0%}".replace("%", " %") in guide
    ratios = [table[f"{d}/none"]["last_over_best"] for d in ("mnist_600", "fmnist_600")]
    assert f"end {ratios[0]:.2f}x (MNIST) and {ratios[1]:.2f}x (Fashion-MNIST) above their best" in guide
    gaps = [h["d_gap"] for r in report["runs"] if r["name"].startswith("mnist_600-none") for h in r["history"]]
    assert max(gaps) < 0.15 and "D's gap stays under 0.15 logit in every\n  MNIST-600 run" in guide

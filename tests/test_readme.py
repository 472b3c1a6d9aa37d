"""The README's promises: its Python example runs as written, its first lines are the two fresh-machine commands."""

from __future__ import annotations

import json
import re

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_first_lines_are_the_install_and_test_commands():
    lines = README.splitlines()
    assert lines[1] == "```bash"
    assert lines[2].endswith("pip install -e . && regan-train")
    assert lines[3].endswith("pip install -e '.[dev]' && python -m pytest -q")


def test_python_example_trains_and_stops_or_finishes(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    module, callbacks = namespace["module"], namespace["callbacks"]
    stopper = callbacks[1]
    assert 0 < module.g_steps <= 1500
    assert stopper.status in ("completed", "stopped_early")
    # The ring's decision metric is val/mmd, and the generator the run ends with is judged on ground truth: the
    # share of 4,000 fresh samples near a mode and the modes they cover (not the metric the rules read).
    assert callbacks[2].monitor == "val/mmd" and callbacks[2].best_value is not None
    assert callbacks[2].best_value < 0.05
    from lightning_regan.data.gaussians import mode_coverage

    samples = module.generate(4000).cpu()
    truth = mode_coverage(samples, namespace["data"].centers, namespace["data"].std)
    assert truth["modes_covered"] >= 6 and truth["hq_fraction"] >= 0.2, truth


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]


def test_study_table_and_readme_figures_are_the_committed_results():
    """The early-termination table of docs/studies/early_stopping.md is the study's output, and the README's one-line
    evidence quotes the chosen rule's held-out row of it."""
    study = (REPO_ROOT / "studies" / "results" / "early_stopping_study.md").read_text()
    rows = set(_table_rows(study))
    docs = (REPO_ROOT / "docs" / "studies" / "early_stopping.md").read_text()
    assert set(_table_rows(docs.split("<!-- study -->", 1)[1].split("<!-- /study -->", 1)[0])) == rows
    held_out = study.split("\nHeld-out seeds:\n", 1)[1].strip().split("\n\n", 1)[0]  # the held-out table
    chosen = next(r for r in _table_rows(held_out) if r.startswith("| **"))  # the chosen rule's row, in bold
    kept, total = chosen.split("|")[2].strip().split("/")
    guide = (REPO_ROOT / "docs" / "early-termination.md").read_text()  # v5's figures moved from the README to the guide
    assert f"kept {kept} of {total} healthy runs within 5 %" in guide
    assert "(studies/early_stopping.md)" in guide


def test_readme_and_guide_quote_the_ground_truth_study():
    """The README's and the guide's evidence on the stop rule are the committed ground-truth targets (held-out seeds)."""
    import json

    results = REPO_ROOT / "studies" / "results"
    targets = json.loads((results / "stopping_targets.json").read_text())
    held = json.loads((results / "stopping_study.json").read_text())["analysis"]["held_out"][targets["chosen"]]
    within = round(targets["gap_within_share"] * held["healthy_runs"])
    text = " ".join(README.split())
    guide = " ".join((REPO_ROOT / "docs" / "early-termination.md").read_text().split())
    assert f"within max(5 %, grader noise) in {within} of {held['healthy_runs']} healthy runs" in text
    assert f"the stop at {targets['lag_median']:.1f}x the oracle's step" in text
    assert targets["diverging_within_one_share"] == 1.0 and "every diverging run stopped within one evaluation" in text
    assert f"in {within} of {held['healthy_runs']} healthy runs (median gap {100 * targets['gap_median']:.1f} %)" in guide
    assert f"at most {targets['lag_max']:.1f}x" in guide


def test_readme_reports_no_suite_time_or_machine_load():
    lowered = README.lower()
    assert "load average" not in lowered and "under a load" not in lowered
    assert not re.search(r"\d+ tests in", README)
    assert len(README.splitlines()) <= 180


def test_conditional_step_cost_quoted_is_the_committed_benchmark():
    """The conditional-step figures of README.md and docs/conditional.md are bench/results/bench_conditional.json's."""
    setups = json.loads((REPO_ROOT / "bench" / "results" / "bench_conditional.json").read_text())["setups"]
    conditional = (REPO_ROOT / "docs" / "conditional.md").read_text()
    for name, label in (("dcgan_digits", "DCGAN"), ("mlp_digits", "MLP")):
        quoted = f"{setups[name]['ratio_median']:.3f}x {label}"
        assert quoted in README, quoted
        assert f"{setups[name]['ratio_median']:.3f}x ({label}" in conditional, name


def test_readme_and_study_page_quote_the_real_curve_replay():
    """The real-curve figures of README.md and docs/studies/real_curves.md are studies/results/real_curves.json's."""
    import json

    report = json.loads((REPO_ROOT / "studies" / "results" / "real_curves.json").read_text())
    new, old = report["configs"]["default"]["totals"], report["configs"]["trend_v5"]["totals"]
    text = " ".join(README.split())
    assert (f"within 5 % of the run's best on {new['within']} of {new['curves']} and captured "
            f"{100 * new['captured_share']:.1f} % of the compute an oracle saves (the 0.3 rule: "
            f"{100 * old['captured_share']:.1f} %)") in text
    guide = " ".join((REPO_ROOT / "docs" / "early-termination.md").read_text().split())
    assert (f"within 5 % of the run's best on {new['within']} of {new['curves']}, decided "
            f"{round(new['finetune_decided_share'] * new['finetunes'])} of the {new['finetunes']} fine-tunes an oracle "
            f"would stop early and {round(new['peaked_stopped_share'] * new['peaked'])} of the {new['peaked']} runs that "
            f"peaked, and saved {100 * new['captured_share']:.1f} % of what an eps-oracle saves") in guide
    page = (REPO_ROOT / "docs" / "studies" / "real_curves.md").read_text()
    for totals in (new, old):
        assert (f"| {totals['within']} of {totals['curves']} ({100 * totals['within_share']:.1f} %) | "
                f"{100 * totals['captured_share']:.1f} % | {100 * totals['finetune_decided_share']:.1f} % | "
                f"{100 * totals['peaked_stopped_share']:.1f} % | {totals['stopped']} |") in page
    held = json.loads((REPO_ROOT / "studies" / "results" / "real_curves_heldout" / "real_curves.json").read_text())
    for totals in (held["configs"]["default"]["totals"], held["configs"]["trend_v5"]["totals"]):
        assert (f"| {totals['within']} of {totals['curves']} ({100 * totals['within_share']:.1f} %) | "
                f"{100 * totals['captured_share']:.1f} % | n/a | {100 * totals['peaked_stopped_share']:.1f} % | "
                f"{totals['stopped']} |") in page
    targets = json.loads((REPO_ROOT / "studies" / "results" / "real_curves_targets.json").read_text())
    for key in ("within_share", "captured_share", "finetune_decided_share", "peaked_stopped_share"):
        entry = targets[key]
        assert f"| {key} {entry['target']} | {entry['value']:.3f} | {'yes' if entry['met'] else 'no'} |" in page


def test_the_stopping_page_quotes_the_targets():
    """docs/studies/stopping.md quotes the committed targets (study v8, held-out seeds, the default rule)."""
    import json

    results = REPO_ROOT / "studies" / "results"
    targets = json.loads((results / "stopping_targets.json").read_text())
    held = json.loads((results / "stopping_study.json").read_text())["analysis"]["held_out"][targets["chosen"]]
    within = round(targets["gap_within_share"] * held["healthy_runs"])
    page = " ".join((REPO_ROOT / "docs" / "studies" / "stopping.md").read_text().split())
    assert (f"within max(5 %, grader noise) in {within} of {held['healthy_runs']} healthy runs (median gap "
            f"{100 * targets['gap_median']:.1f} %), the stop at {targets['lag_median']:.1f}x the oracle's step "
            f"(median; at most {targets['lag_max']:.1f}x)") in page

"""The README's promises: its Python example runs as written, its first lines are the two fresh-machine commands."""

from __future__ import annotations

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
    assert 0 < module.g_steps <= 1000
    assert stopper.status in ("completed", "stopped_early")
    # Identity-feature FID on the ring: a generator that has found the ring scores well under 2.
    assert stopper.best_fid is not None and stopper.best_fid < 2.0


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]


def test_study_tables_in_readme_and_docs_are_the_committed_results():
    """The early-termination figures quoted in README.md and docs/studies/early_stopping.md are rows of the study's output."""
    study = (REPO_ROOT / "studies" / "results" / "early_stopping_study.md").read_text()
    rows = set(_table_rows(study))
    section = README.split("<!-- study-table -->", 1)[1].split("\n## ", 1)[0]
    quoted = _table_rows(section)
    assert quoted, "README has no study table after <!-- study-table -->"
    assert set(quoted) <= rows, set(quoted) - rows
    docs = (REPO_ROOT / "docs" / "studies" / "early_stopping.md").read_text()
    assert set(_table_rows(docs.split("<!-- study -->", 1)[1].split("<!-- /study -->", 1)[0])) == rows

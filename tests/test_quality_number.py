"""One quality number from end to end: the default ``regan-train`` shows, saves and reports the metric it decides on,
and ``regan-eval --mmd`` reproduces it from the best checkpoint. One short default run (module fixture) serves all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default config, with a small budget and a cheaper FID monitor (200 samples, every 10 G steps).
OVERRIDES = ["max_g_steps=20", "callbacks.fid.every_n_g_steps=10", "callbacks.fid.num_samples=200"]


def visible_lines(text: str) -> list[str]:
    """What a terminal shows of ``text``: per line, the last carriage-return segment (the bar's final redraw)."""
    lines = []
    for line in text.split("\n"):
        shown = line.rsplit("\r", 1)[-1].rstrip()
        if shown:
            lines.append(shown)
    return lines


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("quality")
    out = root / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    env.setdefault("REGAN_CACHE_DIR", str(root / "cache"))
    cmd = [shutil.which("regan-train") or "regan-train", *OVERRIDES, f"output_dir={out}"]
    if shutil.which("regan-train") is None:
        cmd = [sys.executable, "-m", "lightning_regan.cli.train", *OVERRIDES, f"output_dir={out}"]
    # bytes: text mode would turn the bar's carriage returns into newlines
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, timeout=600)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return {"out": out, "stdout": stdout, "stderr": stderr, "cache": env["REGAN_CACHE_DIR"],
            "summary": json.loads((out / "summary.json").read_text())}


def test_summary_leads_with_the_stop_metric(default_run):
    s = default_run["summary"]
    assert list(s)[:4] == ["stop_metric", "stop_mode", "best_value", "best_g_step"]
    assert (s["stop_metric"], s["stop_mode"]) == ("val/mmd", "min")
    assert [g for g, _ in s["history"]] == [10, 20] and s["history"] == s["mmd_history"]
    assert (s["best_g_step"], s["best_value"]) == min(((g, v) for g, v in s["history"]), key=lambda r: r[1])
    assert s["best_value"] == s["best_generator"]["best_value"]  # the number BestGenerator and best.ckpt follow
    assert s["best_fid"] is not None and len(s["fid_history"]) == 2  # FID kept beside it
    assert "augment_history" not in s and not (default_run["out"] / "plots" / "augment.png").exists()
    assert s["plots"]["stop_metric"] == "plots/mmd.png" and (default_run["out"] / "plots" / "mmd.png").is_file()


def test_console_shows_the_stop_metric_each_event_once_and_ends_in_regans_words(default_run):
    text = default_run["stdout"] + default_run["stderr"]
    lines = visible_lines(text)
    bar = [line for line in lines if line.startswith("G steps")]
    assert bar and re.search(r"mmd=[\d.e-]+, best_mmd=[\d.e-]+", bar[-1]), bar[-1:]
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert not repeated, repeated
    assert sum("FIDMonitor: G step 10:" in line for line in lines) == 1
    assert "Trainer.fit` stopped" not in text and "INFO:" not in text
    s = default_run["summary"]
    assert lines[-1] == (f"regan-train: completed (max_steps: the G-step budget max_g_steps is spent) at G step 20 of "
                         f"20; best val/mmd {s['best_value']:.4g} at G step {s['best_g_step']}; best checkpoint "
                         f"{s['checkpoint_best']}.")
    assert Path(s["checkpoint_best"]).is_file()


def test_train_log_keeps_the_full_log(default_run):
    log = next((default_run["out"].parent / "outputs").rglob("train.log"))
    text = log.read_text()
    assert "[lightning_regan.callbacks.fid_monitor]" in text or "FIDMonitor: G step 10" in text
    assert "`Trainer.fit` stopped" in text and "regan-train: completed" in text


def test_sample_grid_is_at_least_256_px(default_run):
    with Image.open(default_run["out"] / "samples" / "last.png") as img:
        assert min(img.size) >= 256, img.size


def test_regan_eval_mmd_reproduces_the_logged_best_value(default_run, tmp_path, monkeypatch, capsys):
    from lightning_regan.cli.evaluate import main

    monkeypatch.setenv("REGAN_CACHE_DIR", default_run["cache"])
    s = default_run["summary"]
    out = tmp_path / "eval.json"
    assert main([s["checkpoint_best"], "--mmd", "--json", str(out), "--no-progress", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["num_samples"] == 200 == result["num_real_samples"]  # the run's monitor settings, from the ckpt
    assert result["mmd"] == pytest.approx(s["best_value"], rel=1e-5, abs=1e-7)
    best_fid = dict((g, f) for g, f in s["fid_history"])[s["best_g_step"]]
    assert result["fid"] == pytest.approx(best_fid, rel=1e-4)
    assert f"MMD {result['mmd']:.6g}" in capsys.readouterr().out

"""``regan-train`` end to end through its console script: outputs of a run, presets, and errors before training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_TYPES = {
    "status": str, "stop_reason": str, "g_steps": int, "d_steps": int, "wall_time_s": float,
    "fid_eval_time_s": float, "best_fid": (float, type(None)), "best_fid_step": (int, type(None)),
    "fid_history": list, "checkpoint_best": (str, type(None)), "world_size": int,
}


def run_cli(tool: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    assert exe, f"{tool} is not installed (pip install -e .)"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def train_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("regan-train", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *overrides,
                   cwd=run_dir.parent)


def check_summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for key, kind in SUMMARY_TYPES.items():
        assert key in summary, f"summary.json lacks {key}"
        assert isinstance(summary[key], kind), (key, summary[key])
    assert summary["status"] in ("completed", "stopped_early", "diverged", "failed")
    for g_step, fid in summary["fid_history"]:
        assert isinstance(g_step, int) and 0 < g_step <= summary["g_steps"] and fid >= 0
    if summary["best_fid"] is not None:
        assert [summary["best_fid_step"], summary["best_fid"]] in summary["fid_history"]
        assert summary["best_fid"] == min(f for _, f in summary["fid_history"])
    return summary


def test_digits_run_writes_summary_checkpoints_samples_and_plots(tmp_path):
    run = tmp_path / "digits"
    proc = train_cli(run, "max_g_steps=30", "callbacks.fid.every_n_g_steps=10", "callbacks.fid.num_samples=200",
                     "callbacks.samples.every_n_g_steps=10", "model.generator.channels=16", "model.discriminator.channels=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_summary(run)
    assert summary["status"] == "completed" and summary["stop_reason"] == "max_steps"
    assert summary["g_steps"] == summary["d_steps"] == 30 and summary["world_size"] == 1
    assert [g for g, _ in summary["fid_history"]] == [10, 20, 30]
    assert summary["checkpoint_best"] and Path(summary["checkpoint_best"]).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for png in ("samples/step_10.png", "samples/last.png", "plots/losses.png", "plots/fid.png"):
        assert (run / png).read_bytes().startswith(PNG_MAGIC), png
    assert "train/d_reg/r1" in summary["final_metrics"]  # the default regularizer was applied

    grid = tmp_path / "grid.png"
    proc = run_cli("regan-sample", str(run / "checkpoints" / "last.ckpt"), "-o", str(grid), "-n", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert grid.read_bytes().startswith(PNG_MAGIC)


def test_ring_run_with_two_regularizers_reports_mode_coverage(tmp_path):
    run = tmp_path / "ring"
    proc = train_cli(run, "data=gaussians", "model=mlp", "regularizer=[r1,l2]", "max_g_steps=40",
                     "callbacks.fid.every_n_g_steps=20", "callbacks.fid.num_samples=500", "callbacks.samples.every_n_g_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_summary(run)
    assert summary["status"] == "completed" and summary["g_steps"] == 40
    assert {"train/d_reg/r1", "train/d_reg/l2"} <= set(summary["final_metrics"])
    coverage = summary["mode_coverage"]
    assert coverage["num_modes"] == 8 and 0 <= coverage["modes_covered"] <= 8
    assert [h[0] for h in coverage["history"]] == [20, 40]
    assert (run / "samples" / "last.png").read_bytes().startswith(PNG_MAGIC)  # a scatter plot for points


def test_diverging_preset_ends_diverged_and_keeps_its_best_checkpoint(tmp_path):
    run = tmp_path / "diverging"
    proc = train_cli(run, "experiment=diverging")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_summary(run)
    assert summary["status"] == "diverged" and summary["stop_reason"] == "divergence"
    assert summary["g_steps"] < 400  # stopped long before its budget
    assert "Divergence:" in summary["early_termination"]["stop_message"]
    assert summary["best_fid"] is not None and Path(summary["checkpoint_best"]).is_file()
    assert (run / "plots" / "fid.png").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=nope"], "unknown choice data=nope"),
        (["regularizer.r1.weight=-1"], "regularizer.r1.weight must be a number >= 0"),
        (["module.n_critic=0"], "module.n_critic must be an integer >= 1"),
        (["max_g_steps=0"], "max_g_steps must be an integer >= 1"),
        (["data=mnist", "data.root=/nonexistent/datasets"], "/nonexistent/datasets"),
        (["ckpt_path=/nonexistent/x.ckpt"], "does not exist"),
        (["module.ema_decay=2"], "module.ema_decay must be a number in (0, 1)"),
        (["callbacks.fid.num_samples=-3"], "num_samples must be an integer >= 2"),
        (["module.g_optimizer.lr=-1"], "module.g_optimizer (torch.optim.Adam with lr=-1"),
        (["seed=abc"], "seed must be an integer >= 0"),
        (["model=resnet"], "resize the data with data.image_size=32"),
        (["data=gaussians"], "use model=mlp for 2-D points"),
        (["stop_mode=best"], "stop_mode must be min (lower is better) or max"),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, monkeypatch, capsys, overrides, message):
    # In-process (the console script is exercised above); Hydra's own error path exits too.
    from lightning_regan.cli.entry import main

    run = tmp_path / "bad"
    monkeypatch.setattr(sys, "argv", ["regan-train", f"hydra.run.dir={run}", *overrides])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert message in err, err[-3000:]
    assert exited.value.code == 2 and "regan-train: error: " in err
    assert not (run / "summary.json").exists() and not (run / "checkpoints").exists()


def test_console_script_reports_a_bad_value_in_one_line(tmp_path):
    proc = train_cli(tmp_path / "bad", "module.n_critic=0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("regan-train: error: module.n_critic must be")

"""Exit codes a scheduler can trust: SIGTERM -> 143, SIGINT -> 130, a resumable ``last.ckpt`` either way; SLURM's
requeue signal (SIGUSR1) saves an HPC checkpoint, calls ``scontrol requeue`` and the requeued job resumes from it.

Each test runs a real ``regan-train`` process (tiny model on the 2-D ring, no FID), waits for its first checkpoint,
then signals it. ``scontrol`` is a fake on ``PATH`` that records its arguments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=gaussians", "data.n_samples=1024", "data.batch_size=64", "model=mlp", "model.generator.hidden=[16]",
    "model.discriminator.hidden=[16]", "callbacks.fid.every_n_g_steps=0", "~callbacks.samples", "logger=none",
    "trainer.enable_progress_bar=false", "early_stopping=none", "+callbacks.summary.plots=false",
    "callbacks.checkpoint.every_n_train_steps=4",  # every 2 G steps (n_critic=1: 2 Lightning steps per G step)
]


def train_cmd(run: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lightning_regan.cli.entry", f"hydra.run.dir={run}", *TINY, *overrides]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return dict(base, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **extra)


def start_and_signal(run: Path, sig: int, environ: dict[str, str], wait_for: Optional[Path] = None,
                     before: Optional[int] = None, handled: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Start a long run, wait until ``wait_for`` (default: its last.ckpt) exists, send ``before`` (if any) and wait
    until ``handled`` exists, then send ``sig``; return the finished process."""
    wait_for = wait_for or run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(train_cmd(run, "max_g_steps=1000000"), env=environ, cwd=run.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not wait_for.is_file():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        if before is not None:
            proc.send_signal(before)
            deadline = time.monotonic() + 120
            while handled is not None and not handled.is_file():  # the handler's last act (checkpoint saved first)
                assert proc.poll() is None and time.monotonic() < deadline, "signal not handled"
                time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def g_steps_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["regan"]["g_steps"])


def test_sigterm_exits_143_marks_the_run_not_completed_and_last_ckpt_resumes(tmp_path):
    run = tmp_path / "run"
    proc = start_and_signal(run, signal.SIGTERM, env())
    assert proc.returncode == 143, proc.stderr[-3000:]
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("regan-train: stopped by SIGTERM at G step "), proc.stderr[-2000:]
    assert "ckpt_path=last" in last_line and "(exit code 143)" in last_line
    assert "Traceback" not in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stop_reason"] == "SIGTERMException"

    g = g_steps_of(run / "checkpoints" / "last.ckpt")
    assert g >= 2
    resumed = subprocess.run(train_cmd(run, "ckpt_path=last", f"max_g_steps={g + 2}"), env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["g_steps"] == g + 2


@pytest.mark.slow
def test_sigint_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = start_and_signal(run, signal.SIGINT, env())
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("regan-train: stopped by SIGINT"), proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stop_reason"] == "KeyboardInterrupt"


@pytest.mark.slow
def test_slurm_requeue_signal_saves_an_hpc_checkpoint_requeues_and_the_requeued_job_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    slurm = env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NTASKS="1",
                SLURM_JOB_NAME="regan", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    run = tmp_path / "run"
    # SLURM sends the requeue signal (--signal=USR1@...) before the end of the time limit, then SIGTERM.
    proc = start_and_signal(run, signal.SIGTERM, slurm, before=signal.SIGUSR1, handled=calls)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    (hpc,) = run.glob("hpc_ckpt_*.ckpt")
    g = g_steps_of(hpc)
    assert g >= 2

    # The requeued job: the same command, no ckpt_path; Lightning finds the HPC checkpoint by itself.
    requeued = subprocess.run(train_cmd(run, f"max_g_steps={g + 2}"), env=slurm, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {hpc}" in requeued.stdout + requeued.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["g_steps"] == g + 2

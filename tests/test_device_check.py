"""scripts/device_check.sh (the one-shot GPU check): its arguments, its one-line refusal without a GPU, and the
helpers that read its runs (tested on the CPU; the GPU measurements themselves run where a GPU is lent)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.sh"

sys.path.insert(0, str(REPO / "scripts"))
import device_check  # noqa: E402


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    ((), "missing OUT_DIR"),
    (("a", "b"), "one OUT_DIR only"),
    (("out", "--bogus"), "unknown option --bogus"),
    (("out", "--g-steps", "2"), "--g-steps must be an integer >= 4"),
    (("out", "--fid-samples", "x"), "--fid-samples must be an integer >= 2"),
    (("out", "--weights"), "--weights needs a value"),
])
def test_bad_arguments_are_one_line_with_exit_code_2(args, message):
    proc = run_script(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("device_check.sh: ")


def test_help_lists_the_arguments():
    proc = run_script("--help")
    assert proc.returncode == 0
    for option in ("OUT_DIR", "--data-root", "--weights", "--g-steps", "--fid-samples"):
        assert option in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would measure it")
def test_refuses_in_one_line_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    proc = run_script(str(out), "--data-root", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and lines[0].startswith("device_check.sh: "), proc.stderr
    assert not out.exists()  # refused before writing anything


def _fake_run(run: Path, fids: list[float], loss: float = 0.7, status: str = "completed") -> Path:
    (run / "logs").mkdir(parents=True)
    with (run / "logs" / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step", "train/d_loss", "train/g_loss", "train/g_step", "val/fid"])
        w.writeheader()
        for i, fid in enumerate(fids):
            w.writerow({"epoch": 0, "step": 2 * i, "train/d_loss": loss, "train/g_loss": 1.0, "train/g_step": i + 1})
            w.writerow({"epoch": 0, "step": 2 * i + 1, "val/fid": fid, "train/g_step": (i + 1) * 10})
    (run / "summary.json").write_text(json.dumps({"status": status, "best_fid": min(fids), "g_steps": 10 * len(fids)}))
    return run


@pytest.mark.parametrize("fids,loss,ok", [([90.0, 40.0, 20.0], 0.7, True), ([20.0, 40.0], 0.7, False),
                                          ([90.0, 40.0], float("nan"), False)])
def test_run_check_reads_losses_and_fid_history(tmp_path, fids, loss, ok):
    run = _fake_run(tmp_path / "run", fids, loss)
    assert device_check.main(["run-check", str(run), str(tmp_path / "check.json")]) == 0
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["ok"] is ok and result["losses_finite"] is (loss == loss)
    assert result["fid_decreasing"] is (fids[-1] < fids[0]) and [f for _, f in result["fid"]] == fids
    assert result["summary"]["status"] == "completed"


def test_summarize_gathers_every_json_and_the_step_log(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"gpu": "X"}))
    (tmp_path / "steps.tsv").write_text("env\t0\t3\ntrain_bf16\t124\t150\n")
    assert device_check.main(["summarize", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert data["env"] == {"gpu": "X"}
    assert data["steps"] == [{"step": "env", "exit_code": "0", "seconds": "3"},
                             {"step": "train_bf16", "exit_code": "124", "seconds": "150"}]


def test_helper_usage_is_exit_code_2():
    assert device_check.main([]) == 2 and device_check.main(["run-check", "only-one"]) == 2


def test_run_check_falls_back_on_the_summary(tmp_path):
    """Nothing logged to CSV (a short run): the summary's last-step metrics and FID history are read instead."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "fid_history": [[100, 80.0], [200, 30.0]],
        "final_metrics": {"train/d_loss": 1.2, "train/g_loss": 0.9, "val/fid": 30.0}}))
    device_check.main(["run-check", str(run), str(tmp_path / "check.json")])
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["ok"] and result["fid"] == [[100, 80.0], [200, 30.0]] and result["losses_logged"]["train/d_loss"] == 1

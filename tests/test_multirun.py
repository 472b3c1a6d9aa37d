"""Hydra multiruns of regan-train (joblib, submitit_local) and scripts/multirun_table.py (Optuna sweeps: test_sweep.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_table_script():
    spec = importlib.util.spec_from_file_location("multirun_table", REPO_ROOT / "scripts" / "multirun_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = load_table_script()


def fake_job(root: Path, job: str, overrides: list[str], best_fid, history, status="completed", reason="max_steps"):
    job_dir = root / job
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {
        "status": status, "stop_reason": reason, "g_steps": history[-1][0] if history else 0, "d_steps": 0,
        "wall_time_s": 1.5, "fid_eval_time_s": 0.25, "best_fid": best_fid,
        "best_fid_step": None if best_fid is None else min(history, key=lambda p: p[1])[0],
        "fid_history": history, "checkpoint_best": None, "world_size": 1,
    }
    (job_dir / "summary.json").write_text(json.dumps(summary))


def test_table_and_plot_from_a_multirun_dir(tmp_path):
    fake_job(tmp_path, "0", ["regularizer=l2", "max_g_steps=30"], 2.0, [[10, 3.0], [20, 2.0], [30, 2.5]])
    # An older run's summary: its reason "fid_plateau" is shown as today's "plateau".
    fake_job(tmp_path, "1", ["regularizer=r1", "max_g_steps=30"], 0.5, [[10, 1.0], [20, 0.5]], "stopped_early", "fid_plateau")
    fake_job(tmp_path, "10", ["regularizer=lecam", "max_g_steps=30"], None, [], "diverged", "divergence")
    (tmp_path / ".submitit" / "x").mkdir(parents=True)  # launcher bookkeeping is ignored
    paths = table.build(tmp_path)

    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "10"]  # natural order, not "0, 1, 10" by accident of length
    assert [r["regularizer"] for r in rows] == ["l2", "r1", "lecam"]
    assert [r["max_g_steps"] for r in rows] == ["30", "30", "30"]
    assert list(rows[0])[:3] == ["job", "regularizer", "max_g_steps"]  # the varying override comes first
    assert [r["best_fid"] for r in rows] == ["2.0", "0.5", ""]
    assert [r["final_fid"] for r in rows] == ["2.5", "0.5", ""]
    assert rows[1]["stop_reason"] == "plateau" and rows[2]["status"] == "diverged"

    md = paths["markdown"].read_text()
    assert "| job | regularizer | max_g_steps | status |" in md
    assert "Best FID: job `1` (regularizer=r1, max_g_steps=30), best_fid=0.5 at G step 20." in md

    png = paths["plot"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_table_ranks_runs_by_their_stop_metric(tmp_path):
    # 0.4 summaries lead with the stop metric: the best run is the best val/mmd, not the best FID
    for job, (mmd, fid) in {"0": (0.02, 1.0), "1": (0.01, 3.0)}.items():
        fake_job(tmp_path, job, [f"seed={job}"], fid, [[10, fid]])
        path = tmp_path / job / "summary.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({"stop_metric": "val/mmd", "stop_mode": "min", "best_value": mmd,
                                    "best_g_step": 10, "history": [[10, mmd]], **summary}))
    paths = table.build(tmp_path)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["stop_metric"], r["best_value"], r["best_fid"]) for r in rows] == [("val/mmd", "0.02", "1.0"),
                                                                                ("val/mmd", "0.01", "3.0")]
    assert "Best val/mmd: job `1` (seed=1), best_value=0.01 at G step 10 (best_fid=3)." in paths["markdown"].read_text()


def test_no_plot_without_fid_and_clear_errors(tmp_path, capsys):
    fake_job(tmp_path / "sweep", "0", ["regularizer=l2"], None, [])
    paths = table.build(tmp_path / "sweep", out_dir=tmp_path / "report")
    assert paths["plot"] is None and paths["csv"].parent == tmp_path / "report"

    assert table.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert table.main([str(tmp_path / "empty")]) == 2
    assert "no summary.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real multiruns of regan-train
FAST = [
    "data=gaussians", "data.n_samples=2048", "data.batch_size=64", "model=mlp", "model.generator.hidden=[64,64]",
    "model.discriminator.hidden=[64,64]", "max_g_steps=10", "callbacks.fid.every_n_g_steps=5", "callbacks.fid.num_samples=128",
    "callbacks.samples.every_n_g_steps=0", "trainer.enable_progress_bar=false", "early_stopping=none",
]


def regan_train_multirun(sweep_dir: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    # One torch thread per process: jobs run side by side on few cores, and oversubscribed threads are ~30x slower.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               HYDRA_FULL_ERROR="1")
    cmd = [sys.executable, "-m", "lightning_regan.cli.train", *overrides, *FAST, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def check_regularizer_sweep(sweep_dir: Path) -> None:
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    assert sorted(summaries) == ["0", "1"]
    for job, reg in (("0", "l2"), ("1", "r1")):
        s = summaries[job]
        assert s["status"] == "completed" and s["g_steps"] == 10 and len(s["fid_history"]) == 2
        # The swept regularizer was really applied (and only it).
        regs = sorted(k for k in s["final_metrics"] if k.startswith("train/d_reg/"))
        assert regs == [f"train/d_reg/{reg}"], regs

    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "multirun_table.py"), str(sweep_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with open(sweep_dir / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["regularizer"]) for r in rows] == [("0", "l2"), ("1", "r1")]
    assert all(float(r["best_fid"]) > 0 for r in rows)
    assert "| job | regularizer |" in (sweep_dir / "runs.md").read_text()
    assert (sweep_dir / "fid_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_joblib_multirun_one_summary_per_job_and_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    regan_train_multirun(sweep, "-m", "regularizer=l2,r1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    check_regularizer_sweep(sweep)


@pytest.mark.slow
def test_submitit_local_multirun_one_summary_per_job_and_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    regan_train_multirun(sweep, "-m", "regularizer=l2,r1", "hydra/launcher=submitit_local",
                         "hydra.launcher.timeout_min=10")
    assert (sweep / ".submitit").is_dir()
    check_regularizer_sweep(sweep)


def test_slurm_gpu_launcher_asks_one_task_per_gpu(tmp_path):
    """The sbatch script submitit would submit for hydra/launcher=slurm_gpu (no SLURM needed to render it)."""
    from unittest import mock

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from lightning_regan.config import compose_config

    cfg = compose_config(["hydra/launcher=slurm_gpu", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                          "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert "find_unused_parameters" not in cfg.trainer.strategy  # plain DDP (GANModule reduces the gradients)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher")
    # What hydra-submitit-launcher's launch() does with the config:
    with mock.patch("shutil.which", return_value="/usr/bin/srun"):
        executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip})
    script = executor._executor._make_submission_file_text("python -m lightning_regan.cli.train", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    assert "\nsrun " in script  # every task (rank) is started by srun: Lightning's SLURMEnvironment spawns nothing

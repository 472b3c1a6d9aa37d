"""A sweep in which one trial fails while training (a user callback raises at G step 6, in the trial with seed 1):
the other trials' results are kept, the failed one is marked in the sweep table and in runs.md, and the sweep's
exit code says that one failed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=gaussians", "data.n_samples=1024", "data.batch_size=64", "model=mlp", "model.generator.hidden=[16]",
    "model.discriminator.hidden=[16]", "callbacks.fid.every_n_g_steps=5", "callbacks.fid.num_samples=128",
    "module.ema_decay=null", "~callbacks.samples", "trainer.enable_progress_bar=false", "early_stopping=none",
    "logger=none", "~callbacks.checkpoint", "+callbacks.summary.plots=false", "max_g_steps=10",
    # tests/boom.py, a user callback: raises at G step 6 in the run whose seed is 1
    "+callbacks.boom._target_=boom.RaiseAtGStep", "+callbacks.boom.g_step=6", "+callbacks.boom.seed=${seed}",
    "+callbacks.boom.fail_seed=1",
]


def load_table_script():
    spec = importlib.util.spec_from_file_location("multirun_table", REPO_ROOT / "scripts" / "multirun_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "lightning_regan.cli.entry", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(cmd, env=env, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_optuna_sweep_with_a_trial_failing_mid_training_keeps_the_others_and_exits_1(tmp_path):
    from lightning_regan.sweep import load_study

    out = tmp_path / "sweep"
    proc = sweep(out, "hparams_search=lr_r1", "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
                 "~hydra.sweeper.sampler.n_startup_trials", "hydra.sweeper.n_trials=3", "pruner=none",
                 "module.d_optimizer.lr=0.003", "module.g_optimizer.lr=0.003", "regularizer.r1.weight=1.0",
                 "seed=choice(0,1,2)")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()
    line = next(l for l in last if l.startswith("regan_optuna sweep: "))
    assert "1 of 3 trials failed" in line and "RuntimeError: boom at G step 6" in line and "sweep.md" in line

    study = load_study(str(out / "optuna.journal"))
    states = {t.params["seed"]: t.state.name for t in study.trials}
    assert states == {"0": "COMPLETE", "1": "FAIL", "2": "COMPLETE"}, states
    for t in study.trials:
        summary = json.loads((out / str(t.number) / "summary.json").read_text())
        if t.params["seed"] == "1":
            assert summary["status"] == "failed" and summary["g_steps"] == 6 and "boom" in summary["error"]
        else:
            assert summary["status"] == "completed" and summary["g_steps"] == 10 and summary["best_fid"] is not None
    md = (out / "sweep.md").read_text()
    failed_row = next(r for r in md.splitlines() if r.startswith(f"| {next(t.number for t in study.trials if t.params['seed'] == '1')} |"))
    assert failed_row.rstrip(" |").endswith("failed")

    table = load_table_script()
    paths = table.build(out)
    runs_md = paths["markdown"].read_text()
    assert "Failed: 1 of 3 runs." in runs_md and "(seed=1) at G step 6: RuntimeError: boom at G step 6" in runs_md


@pytest.mark.slow
def test_basic_sweep_with_a_trial_failing_mid_training_runs_the_others_and_exits_1(tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(out, "seed=0,1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in ("0", "1")}
    assert summaries["0"]["status"] == "completed" and summaries["1"]["status"] == "failed"
    assert "boom at G step 6" in proc.stderr


def test_multirun_table_lists_failed_runs(tmp_path, capsys):
    table = load_table_script()
    for job, seed, status, error in (("0", 0, "completed", None), ("1", 1, "failed", "RuntimeError: boom\nmore")):
        job_dir = tmp_path / job
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", "max_g_steps=10"]))
        summary = {"status": status, "stop_reason": "max_steps" if error is None else "RuntimeError", "g_steps": 10 - 4 * seed,
                   "d_steps": 0, "best_fid": 1.0 + seed, "best_fid_step": 5, "fid_history": [[5, 1.0 + seed]],
                   **({"error": error} if error else {})}
        (job_dir / "summary.json").write_text(json.dumps(summary))
    assert table.main([str(tmp_path)]) == 0
    md = (tmp_path / "runs.md").read_text()
    assert "Failed: 1 of 2 runs.\n- job `1` (seed=1) at G step 6: RuntimeError: boom\n" in md
    assert capsys.readouterr().err.strip() == "multirun_table: 1 run(s) failed: 1 (see runs.md)"


def test_the_sweeper_records_a_failed_job_and_keeps_going(tmp_path):
    """The regan_optuna sweeper's bookkeeping of one failed job (the fast stand-in for the sweeps above)."""
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.regan_optuna_sweeper.sweeper import ReganOptunaSweeper

    sweeper = ReganOptunaSweeper()
    study = optuna.create_study(direction="minimize")
    failed, ok = study.ask(), study.ask()
    sweeper._tell(study, failed, JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom at G step 6")))
    sweeper._tell(study, ok, JobReturn(status=JobStatus.COMPLETED, _return_value=2.5))
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert sweeper.failed == [(failed.number, "RuntimeError: boom at G step 6")] and sweeper.told == 2
    assert study.trials[0].user_attrs["error"] == "RuntimeError: boom at G step 6"

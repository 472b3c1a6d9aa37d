"""Sweeps that prune: OptunaPruning decisions, the regan_optuna sweeper with joblib, resume, the sweep table."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from lightning_regan.callbacks import OptunaPruning, RunSummary
from lightning_regan.sweep import load_study, open_storage, trial_records, write_sweep_report

from test_early_termination import ScriptedFID, ScriptedGAN, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal_study(tmp_path: Path, pruner=None, name: str = "s") -> tuple[optuna.Study, str]:
    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name=name, storage=open_storage(storage), pruner=pruner, direction="minimize")
    return study, storage


def finished_trial(study: optuna.Study, history: dict[int, float]) -> None:
    """A trial that reported ``history`` ({G step: FID}) and completed with its best FID."""
    trial = study.ask()
    for step, fid in history.items():
        trial.report(fid, step)
    study.tell(trial, min(history.values()))


def first_pruned_step(study: optuna.Study, history: dict[int, float]) -> int | None:
    """Feed ``history`` to a new trial as OptunaPruning does; the G step it is pruned at (``None``: never)."""
    trial = study.ask()
    for step, fid in history.items():
        if OptunaPruning.should_prune_trial(trial, step, fid):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, min(history.values()))
    return None


# ------------------------------------------------------------------------------- decisions from scripted FIDs
GOOD = {100: 3.0, 200: 2.0, 300: 1.5, 400: 1.2}
BAD = {100: 3.5, 200: 3.4, 300: 3.3, 400: 3.3}


def test_median_pruner_prunes_a_curve_above_the_median_only_after_warmup(tmp_path):
    study, _ = journal_study(tmp_path, optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=150))
    finished_trial(study, GOOD)
    assert first_pruned_step(study, BAD) is None  # one finished trial < n_startup_trials: no decision yet
    finished_trial(study, {100: 2.5, 200: 1.9, 300: 1.4, 400: 1.1})
    # Median of the finished trials at G step 200 is (2.0 + 1.9 + 3.4) -> 2.0; BAD's best so far 3.4 > 2.0.
    # Step 100 is inside the warm-up, so the first decision is at 200.
    assert first_pruned_step(study, BAD) == 200
    # A curve better than the median at every step goes to the end.
    assert first_pruned_step(study, {100: 2.0, 200: 1.5, 300: 1.0, 400: 0.9}) is None
    # Worse at the start but already below the median by the first decision step: not pruned.
    assert first_pruned_step(study, {100: 9.0, 200: 1.0, 300: 0.9, 400: 0.8}) is None


def test_successive_halving_keeps_the_best_third_at_each_rung(tmp_path):
    study, _ = journal_study(tmp_path, optuna.pruners.SuccessiveHalvingPruner(min_resource=100, reduction_factor=3))
    # The first trial at a rung is always promoted (nothing to compare with).
    assert first_pruned_step(study, GOOD) is None
    # Second at rung 100: only the best of 2 goes on -> a worse curve stops at its first report.
    assert first_pruned_step(study, BAD) == 100
    # A better curve is promoted at 100; at rung 300 (100 * 3) it competes with GOOD and wins.
    assert first_pruned_step(study, {100: 2.9, 200: 1.8, 300: 1.0, 400: 0.9}) is None
    # Good at rung 100 (best of 4 there) but worse than the others at rung 300: pruned at 300.
    assert first_pruned_step(study, {100: 2.0, 200: 1.9, 300: 1.9, 400: 1.9}) == 300


def test_bad_arguments_fail_before_training(tmp_path):
    study, storage = journal_study(tmp_path)
    with pytest.raises(ValueError, match="trial_number must be an integer >= 0.*through a sweep"):
        OptunaPruning(storage, "s", None, optuna.pruners.MedianPruner())
    with pytest.raises(ValueError, match="pruner must be an optuna.pruners.BasePruner"):
        OptunaPruning(storage, "s", 0, "median")
    cb = OptunaPruning(storage, "s", 5, optuna.pruners.MedianPruner())
    with pytest.raises(ValueError, match="has no trial number 5"):
        cb._load_trial()
    with pytest.raises(ValueError, match="no study 'other'"):
        OptunaPruning(storage, "other", 0, optuna.pruners.MedianPruner())._load_trial()


# ------------------------------------------------------------------------------- a pruned trial's summary.json
def test_a_pruned_trial_stops_training_and_says_so_in_summary_json(tmp_path):
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study, storage = journal_study(tmp_path, pruner)
    finished_trial(study, {g: 1.0 for g in range(5, 61, 5)})
    trial = study.ask()  # what the sweeper does before launching the job
    scripted = {g: 50.0 - g for g in range(5, 61, 5)}  # improving, but worse than the finished trial's 1.0
    cb = OptunaPruning(storage, "s", trial.number, pruner)
    module = ScriptedGAN()
    fit(module, [ScriptedFID(scripted), cb, RunSummary(tmp_path / "run")], g_steps=60)

    assert cb.pruned and cb.pruned_g_step == 5 == module.g_steps  # training really ended at the pruning step
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "pruned" and s["stop_reason"] == "pruned"
    assert s["g_steps"] == 5 == s["stopped_g_step"] and s["best_fid"] == 45.0 and s["fid_history"] == [[5, 45.0]]
    assert s["optuna"] == {"study_name": "s", "trial_number": trial.number, "pruner": "MedianPruner",
                           "pruned_g_step": 5, "reported": [[5, 45.0]]}
    assert study.trials[trial.number].intermediate_values == {5: 45.0}  # reported through the storage


def test_an_unpruned_trial_reports_every_evaluation_and_completes(tmp_path):
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study, storage = journal_study(tmp_path, pruner)
    finished_trial(study, {g: 10.0 for g in range(5, 31, 5)})
    trial = study.ask()
    cb = OptunaPruning(storage, "s", trial.number, pruner)
    fit(ScriptedGAN(), [ScriptedFID({g: 5.0 - g / 10 for g in range(5, 31, 5)}), cb, RunSummary(tmp_path)], g_steps=30)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert not cb.pruned and s["status"] == "completed" and s["g_steps"] == 30
    assert [g for g, _ in s["optuna"]["reported"]] == [5, 10, 15, 20, 25, 30]
    assert study.trials[trial.number].intermediate_values == {g: pytest.approx(5.0 - g / 10) for g in range(5, 31, 5)}


# ------------------------------------------------------------------------------- real sweeps through regan-train
FAST = [
    "data=gaussians", "data.n_samples=1024", "data.batch_size=64", "model=mlp", "model.generator.hidden=[32,32]",
    "model.discriminator.hidden=[32,32]", "callbacks.fid.every_n_g_steps=10", "callbacks.fid.num_samples=128", "module.ema_decay=null",
    "~callbacks.samples", "trainer.enable_progress_bar=false", "early_stopping=none", "logger=none",
    "~callbacks.checkpoint", "+callbacks.summary.plots=false",
]
# Two of the four configurations never move G (lr 0): hopeless by construction. The brute-force sampler with seed 2
# runs the two that train G first (trials 0, 1), then the hopeless ones (2, 3); it also stops the study when the
# space is exhausted (study.stop() in tell), which the sweeper must take as the end of the sweep.
SPACE = ["hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler", "~hydra.sweeper.sampler.n_startup_trials",
         "hydra.sweeper.sampler.seed=2", "module.d_optimizer.lr=0.003", "module.g_optimizer.lr=choice(0.003,0.0)",
         "regularizer.r1.weight=choice(0.1,1.0)"]  # a fixed value on the command line leaves the search space


@pytest.mark.parametrize("summary", [True, False])
def test_the_objective_comes_from_the_run_with_or_without_a_summary_file(tmp_path, summary):
    """What a sweeper optimizes is read from the run itself: without RunSummary (``~callbacks.summary``) the trial
    still returns the best value of its stop metric (val/mmd), not ``inf``."""
    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.cli.train import run, train
    from lightning_regan.config import compose_config

    fast = [o for o in FAST if "callbacks.summary" not in o]
    overrides = [*fast, "max_g_steps=20", "+callbacks.summary.plots=false" if summary else "~callbacks.summary"]
    results, objects = train(compose_config([*overrides, f"output_dir={tmp_path / 'train'}"]))
    assert (tmp_path / "train" / "summary.json").is_file() is summary
    fid = next(cb for cb in objects["callbacks"] if isinstance(cb, FIDMonitor))
    assert [g for g, _ in fid.history] == [10, 20] and results["g_steps"] == 20
    assert results["best_fid"] == min(f for _, f in fid.history)
    assert results["stop_metric"] == "val/mmd" and results["best_value"] == min(v for _, v in fid.signal_history["mmd"])
    if not summary:  # the sweeper's value: the same run again, through regan-train's Hydra body
        assert run(compose_config([*overrides, f"output_dir={tmp_path / 'run'}"])) == results["best_value"]


@pytest.mark.parametrize("stop_metric, key", [("val/mmd", "mmd"), ("val/fid", "fid")])
def test_the_sweep_objective_follows_the_stop_metric(tmp_path, stop_metric, key):
    """hparams_search's objective is best_value: the best of whatever stop_metric the run decides on."""
    from lightning_regan.callbacks import FIDMonitor
    from lightning_regan.cli.train import objective, train
    from lightning_regan.config import compose_config

    overrides = [*FAST, "max_g_steps=20", f"stop_metric={stop_metric}", f"output_dir={tmp_path}"]
    cfg = compose_config(overrides)
    results, objects = train(cfg)
    fid = next(cb for cb in objects["callbacks"] if isinstance(cb, FIDMonitor))
    history = fid.history if key == "fid" else fid.signal_history["mmd"]
    assert results["stop_metric"] == stop_metric and results["history"] == [[g, v] for g, v in history]
    assert objective(cfg, results) == min(v for _, v in history) == results["best_value"]
    assert compose_config(["hparams_search=lr_r1"]).optimized_metric == "best_value"
    # a summary from before 0.4 (no stop metric) still gives its best FID; a run without the value its worst
    assert objective(cfg, {"best_fid": 2.5}) == 2.5
    assert objective(cfg, {"stop_metric": stop_metric, "best_value": None}) == float("inf")


@pytest.mark.parametrize("stop_metric, direction", [("val/mmd", "minimize"), ("val/fid", "minimize"),
                                                    ("val/class_accuracy", "maximize")])
def test_the_sweep_direction_follows_the_stop_metrics_mode(tmp_path, stop_metric, direction):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightning_regan.cli.train import objective
    from lightning_regan.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=lr_r1", f"stop_metric={stop_metric}"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction and cfg.callbacks.optuna_pruning.monitor == stop_metric
    assert cfg.callbacks.best_generator.mode == cfg.stop_mode == ("max" if direction == "maximize" else "min")
    worst = objective(cfg, {"stop_metric": stop_metric, "best_value": None})
    assert worst == (float("-inf") if direction == "maximize" else float("inf"))


def sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lightning_regan.cli.train", "-m", "hparams_search=lr_r1", *SPACE, *FAST, *overrides,
            f"hydra.sweep.dir={sweep_dir}"]


def sweep_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
                HYDRA_FULL_ERROR="1")


def run_sweep(sweep_dir: Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(sweep_cmd(sweep_dir, *overrides), env=sweep_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow  # a whole Optuna sweep through the joblib launcher; pruning itself is tested above in-process
def test_joblib_sweep_prunes_hopeless_trials_and_writes_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    # Median pruning after 2 finished trials: the first batch (0, 1) always completes, the second (2, 3) is
    # compared with it step by step.
    proc = run_sweep(sweep, "max_g_steps=100", "hydra.sweeper.n_trials=4", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "pruner=median", "pruner.n_startup_trials=2")
    study = load_study(str(sweep / "optuna.journal"))
    trials = study.trials
    assert len(trials) == 4 and len({tuple(sorted(t.params.items())) for t in trials}) == 4
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}, states
    assert [t.params["module.g_optimizer.lr"] for t in trials] == ["0.003", "0.003", "0.0", "0.0"]
    for t in trials:
        s = json.loads((sweep / str(t.number) / "summary.json").read_text())  # job dir = trial number
        assert s["optuna"]["trial_number"] == t.number
        assert t.intermediate_values == {g: pytest.approx(v) for g, v in s["history"]}  # the stop metric's curve
        if t.state.name == "PRUNED":
            # A stalled G repeats its FID: the repeat is confirmed at the next batch start, one G step later.
            assert s["status"] == "pruned" and s["optuna"]["pruned_g_step"] <= s["g_steps"] <= 41
        else:
            assert s["status"] == "completed" and s["g_steps"] == 100 and t.value == pytest.approx(s["best_value"])
    # A G that never moves is never the best; the best trial trains G.
    assert study.best_trial.params["module.g_optimizer.lr"] == "0.003"

    md = (sweep / "sweep.md").read_text()
    assert md in proc.stdout  # printed and written
    assert "| trial | regularizer.r1.weight | module.g_optimizer.lr | g_steps | pruned_at | best_value | best_fid | status |" in md
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    steps = {t.number: json.loads((sweep / str(t.number) / "summary.json").read_text())["g_steps"] for t in trials}
    run = sum(steps.values())
    assert f"G steps: {run:,} run; {run + sum(100 - steps[t.number] for t in pruned):,} without pruning" in md
    best = yaml.safe_load((sweep / "best_trial.yaml").read_text())
    assert best["trial"] == study.best_trial.number and best["params"] == study.best_trial.params
    assert best["config"]["module"]["g_optimizer"]["lr"] == 0.003 and best["config"]["max_g_steps"] == 100

    # The multirun table script sees the same sweep (and rebuilds the sweep table from the journal).
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "multirun_table.py"), str(sweep)],
                         capture_output=True, text=True, timeout=120, env=sweep_env())
    assert out.returncode == 0, out.stderr
    header = (sweep / "runs.csv").read_text().splitlines()[0]
    assert "optuna_trial" not in header and "module.g_optimizer.lr" in header
    assert "sweep:" in out.stdout and (sweep / "sweep.md").read_text() == md


@pytest.mark.slow  # two sweeps, one killed
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("max_g_steps=150", "hydra.sweeper.n_trials=3", "pruner=none")
    proc = subprocess.Popen(sweep_cmd(sweep, *args), env=sweep_env(), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (sweep / "1").is_dir():  # trial 0 finished, trial 1 started
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = (sweep / "0" / "summary.json").read_text()
    before = load_study(str(sweep / "optuna.journal"))
    assert [t.state.name for t in before.trials] == ["COMPLETE", "RUNNING"]
    killed_params = before.trials[1].params

    run_sweep(sweep, *args)
    after = load_study(str(sweep / "optuna.journal"))
    assert (sweep / "0" / "summary.json").read_text() == first  # trial 0 was not run again
    assert after.user_attrs["requeued"] == [1]
    assert [t.state.name for t in after.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert after.trials[2].params == killed_params  # the killed trial's configuration ran again first
    assert [r["trial"] for r in trial_records(after)] == [0, 2, 3]
    assert "3 trials, 0 pruned" in (sweep / "sweep.md").read_text()


def test_sweep_table_from_a_journal(tmp_path):
    study, _ = journal_study(tmp_path, name="t")
    for number, (status, g_steps, best) in enumerate([("completed", 100, 2.0), ("pruned", 20, 5.0)]):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.report(best, 10)
        for key, value in {"status": status, "g_steps": g_steps, "best_fid": best, "max_g_steps": 100}.items():
            trial.set_user_attr(key, value)
        if status == "pruned":
            trial.set_user_attr("stopped_g_step", 20)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, best)
    paths = write_sweep_report(study, tmp_path)
    md = paths["markdown"].read_text()
    assert "2 trials, 1 pruned." in md and "G steps: 120 run; 200 without pruning" in md and "60%" in md
    assert "| 1 |" in md and "| 20 | 20 | 5 | 5 | pruned |" in md  # old trials: best_value from the reported FIDs
    assert "Best trial: 0" in md and yaml.safe_load(paths["best"].read_text())["trial"] == 0


@pytest.mark.parametrize("monitor_first", [True, False])
def test_a_stalled_curve_is_reported_at_every_evaluation_in_either_callback_order(tmp_path, monitor_first):
    """A generator that does not move logs the same FID again and again: each evaluation is still reported at its
    G step (the median pruner then stops the hopeless trial), whether the monitor runs before or after us."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=12)
    study, storage = journal_study(tmp_path, pruner)
    finished_trial(study, {g: 1.0 for g in range(5, 31, 5)})
    trial = study.ask()
    cb = OptunaPruning(storage, "s", trial.number, pruner)
    fid = ScriptedFID({g: 3.0 for g in range(5, 31, 5)})
    module = ScriptedGAN()
    fit(module, [fid, cb] if monitor_first else [cb, fid], g_steps=30)
    assert cb.reported == [(5, 3.0), (10, 3.0), (15, 3.0)]  # 15: first step past the warm-up
    assert cb.pruned and cb.pruned_g_step == 15 and module.g_steps in (15, 16)
    assert study.trials[trial.number].intermediate_values == {5: 3.0, 10: 3.0, 15: 3.0}


def test_a_resumed_seeded_sampler_draws_new_configurations():
    """A restarted RNG would repeat the first run's configurations: resuming reseeds with seed + trials so far."""
    from hydra_plugins.regan_optuna_sweeper.sweeper import ReganOptunaSweeper

    sweeper = ReganOptunaSweeper(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 3})
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}

    def draws(sampler, n=4):
        study = optuna.create_study(sampler=sampler)
        return [study.ask(space).params["lr"] for _ in range(n)]

    first = draws(sweeper.sampler_for(0))
    assert draws(sweeper.sampler_for(0)) == first  # reproducible
    assert not set(draws(sweeper.sampler_for(4))) & set(first)


def test_sweep_study_tables_in_readme_and_docs_are_the_committed_results():
    """The study figures quoted in docs/studies/sweep_pruner.md are rows of studies/sweep_study.py's output."""
    study = (REPO_ROOT / "studies" / "results" / "sweep_study_fid.md").read_text()
    rows = {line for line in study.splitlines() if line.startswith("| ") and not line.startswith("|---")}
    results = json.loads((REPO_ROOT / "studies" / "results" / "sweep_study_fid.json").read_text())
    assert len(results["seeds"]) >= 2 and all(r["same_configurations"] for r in results["seeds"].values())
    for doc in ("docs/studies/sweep_pruner.md",):
        text = (REPO_ROOT / doc).read_text()
        quoted = text.split("<!-- sweep-study -->", 1)[1].split("\n\n#", 1)[0]
        table = [line for line in quoted.splitlines() if line.startswith("| ") and not line.startswith("|---")]
        assert len(table) >= 3, doc  # header and one row per seed
        assert set(table) <= rows, f"{doc} quotes a sweep-study row that studies/results/sweep_study_fid.md does not have"


def sweep_study_module():
    spec = importlib.util.spec_from_file_location("sweep_study", REPO_ROOT / "studies" / "sweep_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unpruned_sweep(histories: list[list[float]], every: int = 100) -> list[optuna.trial.FrozenTrial]:
    """Finished trials of a scripted unpruned sweep: trial i reported ``histories[i]`` at every ``every`` G steps."""
    study = optuna.create_study(direction="minimize")
    for fids in histories:
        study.add_trial(optuna.trial.create_trial(
            value=min(fids), intermediate_values={every * (k + 1): f for k, f in enumerate(fids)},
            user_attrs={"g_steps": every * len(fids)}))
    return study.trials


def test_sweep_study_replays_candidates_and_chooses_by_the_declared_rule():
    """The study's choice on scripted selection sweeps: a slow-starting best trial (1) is lost by a median pruner that
    decides after one finished trial, kept after two; the rule picks the cheapest setting that keeps it."""
    study = sweep_study_module()
    slow_best = [3.5, 3.0, 1.5, 0.3, 0.1]
    trials = unpruned_sweep([[3.0, 2.0, 1.0, 0.8, 0.6], slow_best, *[[3.6 + 0.01 * k] * 5 for k in range(6)]])

    none = study.replay(trials, study.make_pruner("none", {}, 500, 100))
    assert {k: none[k] for k in ("g_steps", "g_steps_ratio", "pruned_trials", "best_trial", "same_best_trial",
                                 "best_fid_gap", "best_fid")} == {
        "g_steps": 4000, "g_steps_ratio": 1.0, "pruned_trials": 0, "best_trial": 1, "same_best_trial": True,
        "best_fid_gap": 0.0, "best_fid": 0.1}
    eager = study.replay(trials, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=100))
    assert eager["best_trial"] == 0 and eager["pruned_trials"] == 7 and eager["best_fid_gap"] == pytest.approx(5.0)
    assert eager["rows"][1] == {"trial": 1, "params": {}, "g_steps": 100, "pruned_at": 100, "best_fid": 3.5,
                                "status": "pruned"}

    candidates = [("eager", "median", {"n_startup_trials": 1, "n_warmup_evals": 1, "interval_evals": 1}),
                  ("late", "median", {"n_startup_trials": 2, "n_warmup_evals": 3, "interval_evals": 1}),
                  ("strict", "percentile", {"percentile": 25.0, "n_startup_trials": 2, "n_warmup_evals": 1,
                                             "interval_evals": 2}),
                  ("off", "none", {})]
    rows = study.replay_candidates({"0": trials}, 500, 100, candidates)
    by = {r["pruner"]: r for r in rows}
    assert by["strict"]["overrides"] == {"percentile": 25.0, "n_startup_trials": 2, "n_warmup_steps": 100,
                                          "interval_steps": 200}
    assert not by["eager"]["keeps_best"] and by["eager"]["worst_ratio"] == pytest.approx(1200 / 4000)
    assert by["late"]["keeps_best"] and not by["late"]["meets_targets"]  # 2 x 500 + 6 x 300 G steps: 70 %
    assert by["strict"]["meets_targets"] and by["strict"]["worst_ratio"] == pytest.approx(0.40)
    assert study.choose(rows)["pruner"] == "strict"
    assert study.choose([by["late"], by["off"], by["eager"]])["pruner"] == "late"  # none meets: cheapest that keeps
    assert study.choose([by["eager"]])["pruner"] == "eager"
    assert study.slug("percentile", by["strict"]["overrides"]) == "percentile_p25_n2_w100_i200"


def test_sweep_survey_counts_settings_that_meet_the_targets_on_every_seed(tmp_path):
    """``--survey``'s replay: a setting counts only if it meets the targets on every seed; the committed survey's
    counts are those of its rows."""
    study = sweep_study_module()
    cheap = unpruned_sweep([[3.0, 2.0, 1.0, 0.8, 0.6], [3.2, 2.5, 1.5, 0.9, 0.5], *[[3.6 + 0.01 * k] * 5 for k in range(6)]])
    slow = unpruned_sweep([[3.0, 2.0, 1.0, 0.8, 0.6], [3.2, 2.5, 1.5, 0.9, 0.5], [3.5, 3.0, 1.5, 0.3, 0.1],
                           *[[3.6 + 0.01 * k] * 5 for k in range(5)]])
    grid = [("strict", "percentile", {"percentile": 25.0, "n_startup_trials": 2, "n_warmup_evals": 1,
                                      "interval_evals": 1}),
            ("off", "none", {})]
    result = study.survey({"0": cheap}, 500, 100, tmp_path, "test", grid)
    assert (result["settings"], result["meet_targets"], result["keep_best"]) == (2, 1, 2)
    result = study.survey({"0": cheap, "1": slow}, 500, 100, tmp_path, "test", grid)  # strict loses seed 1's slow best
    assert (result["meet_targets"], result["keep_best"]) == (0, 1)
    assert "**0** meet both targets" in (tmp_path / "sweep_survey_500.md").read_text()
    for committed in (REPO_ROOT / "studies" / "results").glob("sweep_survey_*.json"):
        saved = json.loads(committed.read_text())
        assert saved["meet_targets"] == sum(r["meets_targets"] for r in saved["rows"])
        assert saved["keep_best"] == sum(r["keeps_best"] for r in saved["rows"]) and saved["settings"] == 300


def test_sweep_study_choice_is_the_ring_sweeps_default_pruner():
    """conf/hparams_search/ring_lr_r1.yaml prunes with what the committed study chose on its selection seeds, and the
    study's targets are judged on seeds the choice did not read."""
    results = json.loads((REPO_ROOT / "studies" / "results" / "sweep_study_fid.json").read_text())
    assert not set(results["selection_seeds"]) & set(results["heldout_seeds"])
    assert set(results["seeds"]) == set(results["heldout_seeds"])
    chosen = results["chosen"]
    search = yaml.safe_load((REPO_ROOT / "conf" / "hparams_search" / "ring_lr_r1.yaml").read_text())
    assert {"/pruner": chosen["option"]} in search["defaults"]
    default = yaml.safe_load((REPO_ROOT / "conf" / "pruner" / f"{chosen['option']}.yaml").read_text())
    assert {k: default[k] for k in chosen["overrides"]} == chosen["overrides"]


@pytest.mark.slow
def test_submitit_local_sweep_reaches_the_study_from_separate_jobs(tmp_path):
    """submitit jobs are separate processes started by submitit: they reach the trial through the journal file."""
    sweep = tmp_path / "sweep"
    run_sweep(sweep, "max_g_steps=100", "hydra.sweeper.n_trials=4", "hydra/launcher=submitit_local",
              "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=2", "pruner=median", "pruner.n_startup_trials=2")
    assert (sweep / ".submitit").is_dir()
    study = load_study(str(sweep / "optuna.journal"))
    assert {t.number: t.state.name for t in study.trials} == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}
    for t in study.trials:
        s = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert t.intermediate_values == {g: pytest.approx(v) for g, v in s["history"]}  # the stop metric's curve
        assert s["status"] == ("pruned" if t.state.name == "PRUNED" else "completed")

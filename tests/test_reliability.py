"""Reliability, third round (issue 33): a full disk, two runs in one folder, resuming an ended run, and the inputs
checked before any work. Table-driven: each case gives the line it must print and its exit code (docs/errors.md,
"Full disk, busy folders and ended runs", lists the same lines).

Runs are in-process ``regan-train`` calls on the 8-mode ring with a tiny budget (a few seconds each); one run is a
real console process (two runs into one folder at once). The full-disk case runs on a real 5 MiB tmpfs where the
test may mount one (root), and always with a fake writer that raises ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The ring, small: FID (identity) every 50 G steps on 200 samples, checkpoints at each evaluation.
RING = ["experiment=ring", "callbacks.fid.every_n_g_steps=50", "callbacks.fid.num_samples=200",
        "callbacks.samples.every_n_g_steps=0", "trainer.enable_progress_bar=false"]
# Stop rules that stop at the second evaluation (no 99 % improvement), so that a run ends "stopped_early".
STOPS_EARLY = ["early_stopping.rules.metric_plateau.warmup_g_steps=0", "early_stopping.rules.metric_plateau.patience=1",
               "early_stopping.rules.metric_plateau.min_delta=0.99", "early_stopping.rules.metric_plateau.window=1"]


STDERR: list[str] = []  # every stderr line of the last regan_train call


def regan_train(*args: str) -> tuple[int, list[str]]:
    """``regan-train *args`` in this process: (exit code, stderr lines of lightning-regan, i.e. ``regan-train: ...``);
    all its stderr lines in :data:`STDERR`."""
    from lightning_regan.cli import entry

    old = sys.argv
    sys.argv = ["regan-train", *args]
    err = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    STDERR[:] = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, [line for line in STDERR if line.startswith("regan-train")]


def digest(folder: Path) -> dict[str, str]:
    """sha1 of every file under ``folder`` (what "nothing was changed" compares)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_every_file_complete(folder: Path) -> None:
    """Every checkpoint loads, every PNG is a whole PNG, every JSON parses; no temporary file is left."""
    import torch
    from PIL import Image

    assert not [p for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))
    for path in folder.rglob("*"):
        if path.suffix == ".ckpt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".json":
            json.loads(path.read_text())


@pytest.fixture(scope="module")
def ended_runs(tmp_path_factory) -> dict[str, Path]:
    """A completed ring run (100 G steps) and one that stopped early (max_g_steps=400, stopped at G step 100)."""
    base = tmp_path_factory.mktemp("ended")
    runs = {"completed": base / "completed", "stopped": base / "stopped"}
    code, lines = regan_train(f"hydra.run.dir={runs['completed']}", *RING, "max_g_steps=100")
    assert code == 0, lines
    code, lines = regan_train(f"hydra.run.dir={runs['stopped']}", *RING, *STOPS_EARLY, "max_g_steps=400")
    assert code == 0, lines
    summary = json.loads((runs["stopped"] / "summary.json").read_text())
    assert summary["status"] == "stopped_early" and summary["stopped_g_step"] == 100, summary
    return runs


def _copy(run: Path, tmp: Path) -> Path:
    target = tmp / run.name
    shutil.copytree(run, target)
    return target


# ------------------------------------------------------------------------------------------ resuming an ended run
# (id, which run, overrides, expected line with {run} for the folder, exit code, whether the folder must be unchanged)
RESUME_CASES = [
    ("completed, same budget", "completed", ["max_g_steps=100"],
     "regan-train: the run in {run} already completed (max_steps at G step 100); max_g_steps=100 adds nothing, so "
     "nothing was changed (raise max_g_steps to train on).", 0, True),
    ("completed, larger budget", "completed", ["max_g_steps=150"],
     "regan-train: the run in {run} completed at G step 100; continuing it to max_g_steps=150.", 0, False),
    ("stopped, same budget", "stopped", [*STOPS_EARLY, "max_g_steps=400"],
     "regan-train: the run in {run} already ended: stopped_early (plateau at G step 100); nothing was changed "
     "(resume_stopped=true reopens it).", 0, True),
    ("stopped, larger budget", "stopped", [*STOPS_EARLY, "max_g_steps=800"],
     "regan-train: error: the run in {run} ended stopped_early (plateau at G step 100), so max_g_steps=800 would "
     "reopen a run the stop rules closed; pass resume_stopped=true to continue it under the stop rules, or "
     "early_stopping=none to train on to max_g_steps=800 without them (nothing was written).", 2, True),
    ("stopped, larger budget, resume_stopped=true", "stopped", ["max_g_steps=150", "resume_stopped=true"],
     "regan-train: the run in {run} ended stopped_early (plateau at G step 100); reopening it to max_g_steps=150 "
     "(resume_stopped=true).", 0, False),
    ("stopped, early_stopping=none", "stopped", ["max_g_steps=150", "early_stopping=none"],
     "regan-train: the run in {run} ended stopped_early (plateau at G step 100); reopening it to max_g_steps=150 "
     "(early_stopping=none).", 0, False),
]


@pytest.mark.parametrize(("which", "overrides", "line", "code", "unchanged"), [c[1:] for c in RESUME_CASES],
                         ids=[c[0] for c in RESUME_CASES])
def test_resuming_an_ended_run(ended_runs, tmp_path, which, overrides, line, code, unchanged):
    run = _copy(ended_runs[which], tmp_path)
    before = digest(run)
    got, lines = regan_train(f"hydra.run.dir={run}", *RING, "ckpt_path=last", *overrides)
    assert got == code, lines
    assert lines[0] == line.format(run=run), lines
    if unchanged:
        assert len(lines) == 1, lines
        assert digest(run) == before  # summary.json, checkpoints, plots, .hydra/, train.log: all untouched
    else:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["g_steps"] > 100 and summary["final_metrics"], summary["g_steps"]
    assert not (run / ".regan.lock").exists()


def test_an_older_runs_summary_saying_fid_plateau_is_judged_the_same(ended_runs, tmp_path):
    from lightning_regan.cli.ended_run import judge_resume
    from lightning_regan.config import compose_config
    from lightning_regan.errors import ConfigError

    run = _copy(ended_runs["stopped"], tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "plateau"  # a fresh run's word; runs before the rename wrote "fid_plateau"
    (run / "summary.json").write_text(json.dumps({**summary, "stop_reason": "fid_plateau"}))
    ckpt = str(run / "checkpoints" / "last.ckpt")
    same = judge_resume(compose_config([*RING, *STOPS_EARLY, "max_g_steps=400"]), ckpt, run)
    assert not same.go and same.line == RESUME_CASES[2][3].format(run=run)
    with pytest.raises(ConfigError, match=r"ended stopped_early \(plateau at G step 100\), so max_g_steps=800"):
        judge_resume(compose_config([*RING, *STOPS_EARLY, "max_g_steps=800"]), ckpt, run)
    reopened = judge_resume(compose_config([*RING, "max_g_steps=150", "resume_stopped=true"]), ckpt, run)
    assert reopened.go and reopened.line == RESUME_CASES[4][3].format(run=run)


# ------------------------------------------------------------------------------------------ one process per folder
def _lock(run: Path, pid: int) -> None:
    from lightning_regan.run_lock import LOCK_NAME, _start_time

    run.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": socket.gethostname(), "started": 0, "proc_start": _start_time(pid)}
    (run / LOCK_NAME).write_text(json.dumps(owner))


def test_a_busy_folder_is_refused_and_a_dead_owners_lock_taken_over(ended_runs, tmp_path):
    run = _copy(ended_runs["completed"], tmp_path)
    before = digest(run)
    owner = subprocess.Popen(["sleep", "60"])
    try:
        _lock(run, owner.pid)
        code, lines = regan_train(f"hydra.run.dir={run}", *RING, "ckpt_path=last", "max_g_steps=150")
        assert code == 2
        assert lines == [f"regan-train: error: hydra.run.dir={run} is in use by another run (PID {owner.pid} on host "
                         f"{socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(0))}); "
                         "wait for it to end or pick another hydra.run.dir (if that process is gone, delete "
                         f"{run / '.regan.lock'})."], lines
        assert {k: v for k, v in digest(run).items() if k != ".regan.lock"} == before  # nothing else written
    finally:
        owner.kill()
        owner.wait()
    # The owner died (killed, as by SIGKILL or a node crash): the lock is stale; resuming takes it over and works.
    code, lines = regan_train(f"hydra.run.dir={run}", *RING, "ckpt_path=last", "max_g_steps=150")
    assert code == 0, lines
    assert lines[0].startswith(f"regan-train: hydra.run.dir={run} was locked by a run that is gone (PID {owner.pid} "
                               f"on host {socket.gethostname()}"), lines
    assert lines[0].endswith("); taking it over."), lines
    assert json.loads((run / "summary.json").read_text())["g_steps"] == 150
    assert not (run / ".regan.lock").exists()


def test_two_runs_started_into_one_folder(tmp_path):
    """A real second process: the first run owns the folder; the second is refused in one line, exit 2; the folder
    ends with one run's files (no best-v1.ckpt)."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    first = subprocess.Popen([sys.executable, "-m", "lightning_regan.cli.entry", f"hydra.run.dir={run}", *RING,
                              "max_g_steps=300"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (run / ".regan.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run / ".regan.lock").exists(), "the first run never took the folder"
        code, lines = regan_train(f"hydra.run.dir={run}", *RING, "max_g_steps=300")
        assert code == 2 and len(lines) == 1, lines
        assert f"is in use by another run (PID {first.pid} on host" in lines[0], lines
    finally:
        _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (run / ".regan.lock").exists()


def test_the_lock_is_not_taken_on_other_ddp_ranks(tmp_path, monkeypatch):
    from lightning_regan.run_lock import lock_run_folder, unlock_run_folder

    monkeypatch.setenv("LOCAL_RANK", "1")
    assert lock_run_folder(tmp_path) is None and not (tmp_path / ".regan.lock").exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    lock = lock_run_folder(tmp_path)
    assert lock is not None and json.loads((tmp_path / ".regan.lock").read_text())["pid"] == os.getpid()
    assert lock_run_folder(tmp_path) is lock  # re-entrant in one process
    unlock_run_folder(tmp_path)
    assert (tmp_path / ".regan.lock").exists()
    unlock_run_folder(tmp_path)
    assert not (tmp_path / ".regan.lock").exists()


# ------------------------------------------------------------------------------------------ a full disk
FULL_DISK_LINE = ("regan-train: error: the disk holding {run}/checkpoints is full (No space left on device; best.ckpt "
                  "was not written); every file left in {run} is complete; the last good checkpoint is "
                  "{run}/checkpoints/last.ckpt: free space, then resume with ckpt_path=last (exit code 1).")


def test_a_full_disk_fake_writer(tmp_path, monkeypatch):
    """The checkpoint writer fails with ENOSPC half-way through its third file: the run stops with one line (exit 1),
    the earlier checkpoints are whole, nothing is left half-written; resuming afterwards works."""
    from lightning_regan import checkpoint_io
    from lightning_regan.atomic import atomic_write

    calls = []

    def fake(path, data):
        calls.append(path)
        if len(calls) < 3:
            return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))

        def half_then_full(tmp: str) -> None:
            Path(tmp).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return atomic_write(path, half_then_full)

    monkeypatch.setattr(checkpoint_io, "write_bytes_atomic", fake)
    run = tmp_path / "run"
    code, lines = regan_train(f"hydra.run.dir={run}", *RING, "max_g_steps=150")
    assert code == 1
    assert lines == [FULL_DISK_LINE.format(run=run)], lines
    check_every_file_complete(run)
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    code, lines = regan_train(f"hydra.run.dir={run}", *RING, "max_g_steps=150", "ckpt_path=last")
    assert code == 0, lines


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 5 MiB tmpfs (room for two ring checkpoints and the logs, not a third); skips where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        import logging

        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in list(getattr(lg, "handlers", [])):
                if str(getattr(handler, "baseFilename", "")).startswith(str(mount)):
                    lg.removeHandler(handler)  # Hydra's train.log handler stays after an in-process run
                    handler.close()
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # lazily, when something still holds it


def test_a_full_disk_real_filesystem(small_tmpfs):
    run = small_tmpfs / "run"
    code, lines = regan_train(f"hydra.run.dir={run}", *RING, "max_g_steps=150")
    assert code == 1
    assert lines == [FULL_DISK_LINE.format(run=run)], lines
    check_every_file_complete(run)
    assert (run / "checkpoints" / "best.ckpt").stat().st_size > 0


def test_plots_and_summary_are_written_atomically(tmp_path, monkeypatch):
    """A plot whose writer fails leaves no file under its final name (the issue's 0-byte losses.png)."""
    from matplotlib.figure import Figure

    from lightning_regan.atomic import DiskFullError, write_json_atomic
    from lightning_regan.plots import plot_losses

    def full(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG")  # a partial file at the temporary path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(DiskFullError) as caught:
        plot_losses([(1, 0.5, 0.7)], tmp_path / "plots" / "losses.png")
    assert caught.value.target == tmp_path / "plots" / "losses.png"
    assert list((tmp_path / "plots").iterdir()) == []
    write_json_atomic(tmp_path / "summary.json", {"status": "completed"})

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", no_room)
    with pytest.raises(DiskFullError):
        write_json_atomic(tmp_path / "summary.json", {"status": "failed"})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "completed"}  # the old one, whole


def test_atomic_checkpoint_io_is_a_lightning_plugin(tmp_path):
    import lightning as L
    import torch

    from lightning_regan import AtomicCheckpointIO

    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"w": torch.ones(2)}, tmp_path / "ckpts" / "a.ckpt")
    assert torch.equal(io_.load_checkpoint(tmp_path / "ckpts" / "a.ckpt")["w"], torch.ones(2))
    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ------------------------------------------------------------------------------------------ checked before any work
def _no_inception(tmp: Path, monkeypatch) -> None:
    monkeypatch.delenv("REGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("REGAN_INCEPTION_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("REGAN_CACHE_DIR", str(tmp / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp / "empty-torch-home"))


# (id, overrides, set-up, the line (``{t}``: tmp_path) or the texts it must hold)
BEFORE_WORK_CASES: list[tuple[str, list[str], Callable, object]] = [
    ("stop metric nothing logs", [*RING, "stop_metric=val/foo"], None,
     "regan-train: error: stop_metric=val/foo is logged by none of the configured callbacks, so the stop rules and "
     "best.ckpt would never see it; the configured callbacks log val/d_gap, val/d_generated, val/d_heldout, val/d_rv, "
     "val/d_train, val/fid, val/fid_std, val/hq_fraction, val/mmd, val/modes_covered, val/precision, val/recall "
     "(e.g. stop_metric=val/mmd)."),
    ("stop metric switched off", [*RING, "callbacks.fid.mmd=false"], None,
     ["stop_metric=val/mmd is logged by none", "(e.g. stop_metric=val/fid); it is logged with callbacks.fid.mmd=true."]),
    ("DiffAugment on 2-D points", [*RING, "augment=diffaugment"], None,
     "regan-train: error: module.augment (DiffAugment) works on images of shape (C, H, W), but "
     "GaussianMixtureDataModule gives samples of shape [2]; use augment=none for 2-D points (or image data, e.g. "
     "data=digits)."),
    ("ADA on 2-D points", [*RING, "augment=ada"], None, ["module.augment (AdaptiveAugment)", "use augment=none for 2-D points"]),
    ("missing Inception weights", ["data=digits", "model=mlp", "max_g_steps=10", "trainer.enable_progress_bar=false",
                                   "callbacks.fid.feature_extractor=inception"], _no_inception,
     ["Inception weights for FID/KID were not found", "regan-fid-weights", "callbacks.fid.allow_download=true",
      "use callbacks.fid.feature_extractor=classifier (or identity for 2-D points; ~callbacks.fid for no FID)."]),
    ("data.limit over the dataset", ["data=digits", "model=mlp", "data.limit=100000000"], None,
     "regan-train: error: DigitsDataModule: data.limit=100000000 is more than the training set's 1797 samples; use "
     "data.limit=1797 or less, a fraction (e.g. data.limit=0.5), or data.limit=null for all of it."),
    ("unquoted path with a space", ["ckpt_path=/tmp/my dir/run[1]/last.ckpt"], None,
     ["mismatched input '['", "quote a path with spaces or special characters for Hydra, inside the shell's quotes: "
      "\"ckpt_path='/tmp/my dir/run[1]/last.ckpt'\")."]),
]


@pytest.mark.parametrize(("overrides", "setup", "expected"), [c[1:] for c in BEFORE_WORK_CASES],
                         ids=[c[0] for c in BEFORE_WORK_CASES])
def test_checked_before_any_work(tmp_path, monkeypatch, overrides, setup, expected):
    if setup is not None:
        setup(tmp_path, monkeypatch)
    run = tmp_path / "run"
    code, lines = regan_train(f"hydra.run.dir={run}", *overrides)
    assert code == 2
    assert len(lines) == 1, lines
    if isinstance(expected, str):
        assert lines[0] == expected.format(t=tmp_path), lines[0]
    else:
        for text in expected:
            assert text in lines[0], (text, lines[0])
    assert not (run / "summary.json").exists() and not (run / "plots").exists()
    assert not (run / "checkpoints").exists() and not (run / ".regan.lock").exists()
    assert STDERR == lines  # nothing before the line: not even Lightning's device lines (the Trainer was not made)


# ------------------------------------------------------------------------------------------ damaged checkpoints
def _damage(ckpt: Path, how: str) -> Path:
    data = ckpt.read_bytes()
    target = ckpt.with_name(f"{how}.ckpt")
    if how == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":
        target.write_bytes(bytes(len(data)))
    else:  # corrupted inside: zeros over the archive's first entries
        target.write_bytes(data[:1000] + bytes(200_000) + data[201_000:])
    return target


DAMAGED_CASES = [
    ("truncated", "is damaged: a zip archive cut short ({size} bytes): its writing was interrupted (a full disk, a "
                  "kill); use {best} or an earlier checkpoint."),
    ("zeroed", "is damaged: it begins with 4,096 zero bytes where a checkpoint begins with 'PK' (zeroed by a crash of "
               "the machine or the filesystem); use {best} or an earlier checkpoint."),
    ("corrupted", "is damaged: the archive is corrupted (PytorchStreamReader failed reading file .format_version: "
                  "invalid header or archive is corrupted); use {best} or an earlier checkpoint."),
]


@pytest.mark.parametrize(("how", "tail"), DAMAGED_CASES, ids=[c[0] for c in DAMAGED_CASES])
def test_a_damaged_checkpoint_is_called_damaged(ended_runs, tmp_path, how, tail):
    run = _copy(ended_runs["completed"], tmp_path)
    bad = _damage(run / "checkpoints" / "last.ckpt", how)
    code, lines = regan_train(f"hydra.run.dir={tmp_path / 'new'}", *RING, f"ckpt_path={bad}")
    assert code == 2 and len(lines) == 1, lines
    expected = tail.format(size=f"{bad.stat().st_size:,}", best=run / "checkpoints" / "best.ckpt")
    assert lines[0] == f"regan-train: error: ckpt_path={str(bad)!r} {expected}", lines[0]


# ------------------------------------------------------------------------------------------ regan-eval, regan-sample
def test_sample_and_eval_count_checks_come_before_torch(tmp_path):
    probe = (
        "import sys\n"
        "from lightning_regan.cli.fast_args import eval_main, sample_main\n"
        "for main, args in ((sample_main, ['x.ckpt', '-n', '0']), (eval_main, ['x.ckpt', '-n', '1'])):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.splitlines() == ["exit 2", "exit 2", "torch imported: False"], proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == ["regan-sample: error: --num must be >= 1, got 0",
                                        "regan-eval: error: --num-samples must be >= 2 (FID needs 2 samples), got 1"]


def test_eval_hints_use_its_own_spellings(ended_runs, tmp_path, monkeypatch, capsys):
    from lightning_regan.cli import evaluate

    ckpt = str(ended_runs["completed"] / "checkpoints" / "last.ckpt")
    assert evaluate.main([ckpt, "--data", "digits", "--no-progress"]) == 2
    line = capsys.readouterr().err.strip()
    assert "but --data digits has samples of shape (1, 8, 8)" in line, line
    _no_inception(tmp_path, monkeypatch)
    assert evaluate.main([ckpt, "--feature-extractor", "inception", "-n", "200", "--no-progress"]) == 2
    line = capsys.readouterr().err.strip()
    assert "use --feature-extractor classifier (or --feature-extractor identity for 2-D points)" in line, line
    assert "feature_extractor='" not in line and "allow_download=True" not in line


def test_few_real_samples_are_warned(ended_runs, capsys):
    from lightning_regan.cli import evaluate

    ckpt = str(ended_runs["completed"] / "checkpoints" / "last.ckpt")
    assert evaluate.main([ckpt, "-n", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["regan-eval: warning: the real statistics of this FID come from 20 samples; below 100 an FID is "
                   "mostly its small-sample bias and noise, not a comparison of the distributions (raise "
                   "--num-real-samples, or evaluate against more real data)."], err
    assert evaluate.main([ckpt, "-n", "100", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_lock_falls_back_to_o_excl_without_hard_links(tmp_path, monkeypatch):
    from lightning_regan import run_lock

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(run_lock.os, "link", no_links)
    with run_lock.RunLock(tmp_path) as lock:
        assert run_lock.read_lock(lock.path)["pid"] == os.getpid()
        with pytest.raises(FileExistsError):
            run_lock._create_exclusive(str(lock.path), lock.path)
    assert not lock.path.exists()


def test_a_stop_metric_nothing_reads_is_not_checked():
    """Without stop rules, checkpoint and best generator nothing reads stop_metric: nothing to refuse."""
    from lightning_regan.builders import build_callbacks
    from lightning_regan.cli.run_checks import check_monitored_metrics, monitored_metrics
    from lightning_regan.config import compose_config, drop_unselected
    from lightning_regan.errors import ConfigError

    cfg = compose_config(["experiment=ring", "callbacks=[summary]", "early_stopping=none", "output_dir=/tmp/unused"])
    drop_unselected(cfg)
    callbacks = build_callbacks(cfg)
    assert monitored_metrics(cfg, callbacks) == []
    check_monitored_metrics(cfg, callbacks)
    # No FID monitor evaluates (none configured, or every_n_g_steps=0): the stop rules read val/mmd in vain on purpose
    # (the loss plateau stands in); a metric no callback could log is still refused.
    for overrides in (["callbacks=[checkpoint,summary]"], ["callbacks.fid.every_n_g_steps=0"]):
        cfg = compose_config(["experiment=ring", *overrides, "output_dir=/tmp/unused"])
        drop_unselected(cfg)
        callbacks = build_callbacks(cfg)
        assert ("val/mmd", "stop_metric") in monitored_metrics(cfg, callbacks)
        check_monitored_metrics(cfg, callbacks)
    cfg = compose_config(["experiment=ring", "callbacks.fid.every_n_g_steps=0", "stop_metric=val/foo",
                          "output_dir=/tmp/unused"])
    drop_unselected(cfg)
    with pytest.raises(ConfigError, match="stop_metric=val/foo is logged by none"):
        check_monitored_metrics(cfg, build_callbacks(cfg))

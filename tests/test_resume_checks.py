"""Resuming with ``ckpt_path``: a real run resumed with other settings is refused before anything is written;
``ckpt_path=last`` with nothing there says it starts fresh; ``ckpt_path=last_required`` refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from lightning_regan.cli.checks import ConfigError, config_differences
from lightning_regan.config import compose_config, drop_unselected

TINY_RING = [
    "data=gaussians", "data.n_samples=256", "data.batch_size=64", "model=mlp", "model.generator.hidden=[8]",
    "model.discriminator.hidden=[8]", "callbacks.fid.every_n_g_steps=0", "~callbacks.samples", "logger=none",
    "trainer.enable_progress_bar=false", "early_stopping=none", "+callbacks.summary.plots=false", "max_g_steps=2",
]


def run_entry(monkeypatch, *args: str) -> int:
    from lightning_regan.cli import entry

    monkeypatch.setattr(sys, "argv", ["regan-train", *args])
    try:
        entry.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_a_real_run_with_another_model_or_data_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    run = tmp_path / "ring"
    assert run_entry(monkeypatch, f"hydra.run.dir={run}", *TINY_RING) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "summary.json").is_file()
    before = snapshot(run)
    capsys.readouterr()
    for change, named in ((["model=dcgan"], "model.generator._target_"), (["data=digits"], "data._target_"),
                          (["data.num_modes=4"], "data.num_modes (checkpoint: 8, now: 4)")):
        group = change[0].split("=")[0] + "." if "." not in change[0].split("=")[0] else None
        base = [a for a in TINY_RING if group is None or not a.startswith(group)]  # keys the other choice lacks
        code = run_entry(monkeypatch, f"hydra.run.dir={run}", *base, "ckpt_path=last", *change)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("regan-train: error: ckpt_path="), err
        assert "last.ckpt" in lines[0] and named in lines[0], lines[0]
        assert snapshot(run) == before  # summary.json, .hydra/, checkpoints: nothing written over


def _cfg(tmp_path: Path, *overrides: str):
    cfg = compose_config(list(overrides))
    drop_unselected(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
    return cfg


def test_ckpt_path_last_with_nothing_there_says_it_starts_fresh(tmp_path, capsys):
    from lightning_regan.cli.checkpoints import resolve_resume

    cfg = _cfg(tmp_path, "ckpt_path=last")
    assert resolve_resume(cfg, cfg.output_dir) is None
    err = capsys.readouterr().err.strip()
    assert err == (f"regan-train: ckpt_path=last: no checkpoint at {tmp_path}/run/checkpoints/last.ckpt, starting a "
                   "fresh run (ckpt_path=last_required makes this an error).")
    with pytest.raises(ConfigError, match=r"ckpt_path=last_required: no checkpoint at .*last\.ckpt"):
        resolve_resume(_cfg(tmp_path, "ckpt_path=last_required"), cfg.output_dir)


def test_settings_free_to_change_on_resume_are_not_differences(tmp_path):
    from omegaconf import OmegaConf

    stored = OmegaConf.to_container(_cfg(tmp_path, "data=mnist", "data.root=/a"), resolve=True)
    now = _cfg(tmp_path, "data=mnist", "data.root=/b", "data.num_workers=2", "max_g_steps=9", "callbacks.fid.num_samples=10",
               "trainer.enable_progress_bar=false")
    assert config_differences(stored, now) == []
    assert config_differences(stored, _cfg(tmp_path, "data=mnist", "module.n_critic=2")) == [
        "module.n_critic (checkpoint: 1, now: 2)"]


def test_a_requeued_slurm_job_is_checked_against_the_checkpoint_lightning_resumes_from(tmp_path, monkeypatch):
    import shutil

    from lightning_regan.cli.train import _resolve_ckpt_path
    from test_bad_inputs import _ring_ckpt

    cfg = _cfg(tmp_path, "data=digits", "model=mlp", "model.generator.hidden=[8]", "model.discriminator.hidden=[8]")
    Path(cfg.output_dir).mkdir(parents=True)
    shutil.copy(_ring_ckpt(tmp_path), Path(cfg.output_dir) / "hpc_ckpt_1.ckpt")
    for key in [k for k in __import__("os").environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert _resolve_ckpt_path(cfg) is None  # not on SLURM: Lightning would not resume from it either
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "regan")
    with pytest.raises(ConfigError, match=r"SLURM requeue checkpoint='.*hpc_ckpt_1\.ckpt' .*data\._target_"):
        _resolve_ckpt_path(cfg)

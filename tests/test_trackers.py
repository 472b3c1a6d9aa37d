"""logger=wandb (offline) and logger=mlflow (a local SQLite store): the configs build, and at the end of a run the tracker
gets the stop metric's best as its summary metric and the plots and the last sample grid as images. Offline only;
skipped where the optional extras are not installed."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from lightning_regan.callbacks.best_generator import BestGenerator
from lightning_regan.callbacks.run_summary import RunSummary
from lightning_regan.config import compose_config

from test_early_termination import ScriptedFID, ScriptedGAN, fit
from test_run_summary import ScriptedSignal


def _run(tmp_path, logger):
    fid = ScriptedFID({4: 40.0, 8: 20.0, 12: 30.0})
    signal = ScriptedSignal("mmd", {4: 0.5, 8: 0.125, 12: 0.25})
    summary = RunSummary(tmp_path, stop_metric="val/mmd")
    fit(ScriptedGAN(), [fid, signal, BestGenerator(monitor="val/mmd", verbose=False), summary], g_steps=14,
        logger=[logger])
    return summary.summary


def test_wandb_offline_gets_the_stop_metric_and_the_plots(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(["logger=wandb", f"output_dir={tmp_path}"])
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
    logger = instantiate(cfg.logger.wandb)
    try:
        summary = _run(tmp_path, logger)
        run = logger.experiment
        assert run.summary["best/val/mmd"] == summary["best_value"] == 0.125
        assert run.summary["best/g_step"] == 8 and run.summary["stop_metric"] == "val/mmd"
        assert run.summary["status"] == "completed"
        media = list((tmp_path / "wandb").rglob("media/images/**/*.png"))
        assert {p.name.split("_")[0] for p in media} >= {"mmd", "fid", "losses"}, media
    finally:
        wandb.finish()


def test_mlflow_local_store_gets_the_stop_metric_and_the_plots(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = compose_config(["logger=mlflow", f"output_dir={tmp_path}"])
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    logger = instantiate(cfg.logger.mlflow)
    summary = _run(tmp_path, logger)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.data.metrics["best/val/mmd"] == summary["best_value"] == 0.125
    assert run.data.tags["stop_metric"] == "val/mmd" and run.data.tags["status"] == "completed"
    plots = {a.path for a in client.list_artifacts(logger.run_id, "plots")}
    assert {"plots/mmd.png", "plots/fid.png", "plots/losses.png"} <= plots


@pytest.mark.parametrize("choice, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_named_before_torch(tmp_path, monkeypatch, choice, package):
    import importlib.util

    from lightning_regan.cli.checks import check_values
    from lightning_regan.errors import ConfigError

    cfg = compose_config([f"logger=[csv,{choice}]", f"output_dir={tmp_path}"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ConfigError, match=rf"^logger={choice} needs the {package} package, which is not installed: "
                                          rf"pip install 'lightning-regan\[{package}\]'"):
        check_values(cfg)

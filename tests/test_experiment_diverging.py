"""``regan-train experiment=diverging``: the preset diverges on purpose, and the run ends as the contract says.

tests/test_train_cli.py runs the preset with its default seed; this one uses another seed (the preset must diverge
for any seed, not by luck) and checks what a diverged run keeps: its best checkpoint, from before the explosion.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from omegaconf import OmegaConf


@pytest.mark.slow  # the default seed's run is in the default suite (test_train_cli.py)
def test_diverging_preset_stops_as_diverged_at_the_first_allowed_step_and_keeps_a_finite_best_checkpoint(tmp_path):
    exe = shutil.which("regan-train")
    assert exe, "regan-train is not installed (pip install -e .)"
    run = tmp_path / "diverging"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [exe, "experiment=diverging", "seed=1", f"hydra.run.dir={run}", "trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stop_reason"] == "divergence"
    early = summary["early_termination"]
    rule = early["rules"]["divergence"]
    # The losses are past the ceilings from the first check on: the rule fires as soon as warmup and patience allow.
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert summary["g_steps"] == rule["warmup_g_steps"] + rule["patience"] - 1 < cfg.max_g_steps
    assert "d_loss_ceiling" in early["stop_message"] and early["stop_message"].endswith("Signaling Trainer to stop.")

    # The best checkpoint is the best FID evaluation, taken before the stop, with finite weights.
    assert summary["best_fid"] is not None and math.isfinite(summary["best_fid"])
    assert summary["best_fid_step"] <= summary["g_steps"]
    checkpoint = torch.load(summary["checkpoint_best"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == summary["best_fid_step"] * (cfg.module.n_critic + 1)
    weights = [t for k, t in checkpoint["state_dict"].items() if k.startswith(("generator.", "discriminator."))]
    assert weights and all(torch.isfinite(t).all() for t in weights if t.is_floating_point())
    # BestGenerator handed back the generator of the best stop-metric evaluation, taken before the stop.
    kept = summary["best_generator"]
    assert kept["restored"] and kept["restored_g_step"] == kept["best_g_step"] <= summary["g_steps"]
    if kept["monitor"] == "val/fid":
        assert kept["best_g_step"] == summary["best_fid_step"]

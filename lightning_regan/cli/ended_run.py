"""Resuming a run that has already ended (``ckpt_path=last`` in a folder whose ``summary.json`` says it ended).

The rule (docs/errors.md, "Resuming"):

- completed, same or smaller ``max_g_steps``: one line, exit code 0, nothing changed;
- completed, larger ``max_g_steps``: it continues to the new budget (one line says so);
- stopped early, diverged or pruned, same ``max_g_steps``: one line, exit code 0, nothing changed;
- stopped early, diverged or pruned, another ``max_g_steps``: refused (exit code 2), because the stop rules decided
  that this run is over; ``resume_stopped=true`` continues it under the stop rules as configured now (their state
  restored), ``early_stopping=none`` trains on to ``max_g_steps`` without them.

The state comes from the run folder's ``summary.json`` (the run's end), the budget it ran with from the checkpoint's
stored config. A checkpoint resumed into another folder starts a new run there and is not judged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from lightning_regan.config import has_target
from lightning_regan.errors import ConfigError
from lightning_regan.stopping.base import normalize_reason

ENDED = ("completed", "stopped_early", "diverged", "pruned")


@dataclass(frozen=True)
class Verdict:
    """What to do with a resume: ``go`` on (after printing ``line`` when set) or stop with ``exit_code`` 0."""

    go: bool
    line: Optional[str] = None
    exit_code: int = 0


def _summary(output_dir: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((output_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def checkpoint_budget(ckpt_path: str | os.PathLike) -> Optional[int]:
    """``max_g_steps`` of the run that wrote the checkpoint (its stored config), or ``None``."""
    from lightning_regan.cli.checkpoints import read_checkpoint
    from lightning_regan.module import CHECKPOINT_KEY

    config = read_checkpoint(ckpt_path, "ckpt_path")[CHECKPOINT_KEY].get("config") or {}
    value = config.get("max_g_steps") if isinstance(config, dict) else None
    return int(value) if isinstance(value, int) else None


def judge_resume(cfg: DictConfig, ckpt_path: Optional[str], output_dir: Optional[str | os.PathLike]) -> Verdict:
    """Apply the module's rule to resuming ``ckpt_path`` into ``output_dir`` with ``cfg``.

    Raises:
        ConfigError: a stopped run would be reopened with another budget (exit code 2), with the overrides to use.
    """
    if not ckpt_path or output_dir is None:
        return Verdict(True)
    folder = Path(output_dir)
    summary = _summary(folder)
    if summary is None or summary.get("status") not in ENDED or not _inside(Path(ckpt_path), folder):
        return Verdict(True)
    status, reason = summary["status"], normalize_reason(summary.get("stop_reason"))  # older runs: fid_plateau
    g_steps = int(summary.get("stopped_g_step") or summary.get("g_steps") or 0)
    budget = int(cfg.max_g_steps)
    before = checkpoint_budget(ckpt_path)
    if status == "completed":
        if budget <= int(summary.get("g_steps") or 0):
            return Verdict(False, f"regan-train: the run in {folder} already completed ({reason} at G step {g_steps}); "
                                  f"max_g_steps={budget} adds nothing, so nothing was changed (raise max_g_steps to "
                                  "train on).")
        return Verdict(True, f"regan-train: the run in {folder} completed at G step {g_steps}; continuing it to "
                             f"max_g_steps={budget}.")
    ended = f"{status} ({reason} at G step {g_steps})"
    if bool(cfg.get("resume_stopped", False)) or not has_target(cfg.get("early_stopping")):
        how = "resume_stopped=true" if cfg.get("resume_stopped", False) else "early_stopping=none"
        return Verdict(True, f"regan-train: the run in {folder} ended {ended}; reopening it to max_g_steps={budget} "
                             f"({how}).")
    if before is None or budget == before:
        return Verdict(False, f"regan-train: the run in {folder} already ended: {ended}; nothing was changed "
                              "(resume_stopped=true reopens it).")
    raise ConfigError(
        f"the run in {folder} ended {ended}, so max_g_steps={budget} would reopen a run the stop rules closed; "
        "pass resume_stopped=true to continue it under the stop rules, or early_stopping=none to train on to "
        f"max_g_steps={budget} without them (nothing was written)."
    )


__all__ = ["ENDED", "Verdict", "checkpoint_budget", "judge_resume"]

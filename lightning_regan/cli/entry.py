"""``regan-train``'s console entry point: the command line is checked torch-free, then the Hydra app runs.

Importing torch and Lightning takes most of a second-to-minutes start on a loaded CPU; a wrong key, choice, value or
output folder is answered before that (:mod:`lightning_regan.cli.checks`), in one line with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_regan.cli.checks import fail, preflight, run_output_dir
from lightning_regan.config import config_dir
from lightning_regan.errors import ConfigError


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    from lightning_regan.cli.train import run  # torch and Lightning from here on

    return run(cfg)


def main() -> None:
    """``regan-train [hydra overrides]``: validate, then train (see :func:`lightning_regan.cli.train.train`)."""
    try:
        cfg = preflight(sys.argv[1:])
    except ConfigError as exc:
        fail(exc)
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    folder = explicit_run_dir(cfg) if cfg is not None and not multirun else None
    ckpt = None
    if cfg is not None and cfg.get("ckpt_path") and not multirun:
        # Resuming: the checkpoint is read and its settings compared before Hydra writes into the run folder.
        from lightning_regan.cli.checkpoints import CheckpointError, resolve_resume  # imports torch

        try:
            ckpt = resolve_resume(cfg, run_output_dir(cfg), announce=False)
        except (ConfigError, CheckpointError) as exc:
            fail(exc)
    if folder is None:
        _app()  # the folder is known inside the Hydra app only: train() takes it there
        return
    from lightning_regan.run_lock import lock_run_folder, unlock_run_folder

    try:  # the run folder is this process's from before Hydra writes into it (.hydra/, train.log) until exit
        lock_run_folder(folder[1], folder[0])
    except ConfigError as exc:
        fail(exc)
    try:
        _before_app(cfg, ckpt, folder[1])
        _app()
    finally:
        unlock_run_folder(folder[1])


def explicit_run_dir(cfg: DictConfig) -> Optional[tuple[str, Path]]:
    """``(key, folder)`` of the run folder when the command line fixes it (``output_dir=...`` or
    ``hydra.run.dir=...`` without interpolations), else ``None`` (e.g. the default folder named by the start time)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    out = raw.get("output_dir")
    if isinstance(out, str) and "${" not in out:
        return "output_dir", Path(out).expanduser()
    run = ((raw.get("hydra") or {}).get("run") or {}).get("dir")
    if isinstance(run, str) and "${" not in run:
        return "hydra.run.dir", Path(run).expanduser()
    return None


def _before_app(cfg: DictConfig, ckpt: Optional[str], folder: Path) -> None:
    """A resume of a run that has already ended is answered here, before Hydra touches the folder."""
    if not ckpt:
        return
    from lightning_regan.cli.ended_run import judge_resume

    try:
        verdict = judge_resume(cfg, ckpt, folder)
    except ConfigError as exc:
        fail(exc)
    if not verdict.go:
        print(verdict.line, file=sys.stderr, flush=True)
        raise SystemExit(verdict.exit_code)


if __name__ == "__main__":
    main()

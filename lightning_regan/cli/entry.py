"""``regan-train``'s console entry point: the command line is checked torch-free, then the Hydra app runs.

Importing torch and Lightning takes most of a second-to-minutes start on a loaded CPU; a wrong key, choice, value or
output folder is answered before that (:mod:`lightning_regan.cli.checks`), in one line with exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

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
    if cfg is not None and cfg.get("ckpt_path") and not any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        # Resuming: the checkpoint is read and its settings compared before Hydra writes into the run folder.
        from lightning_regan.cli.checkpoints import CheckpointError, resolve_resume  # imports torch

        try:
            resolve_resume(cfg, run_output_dir(cfg), announce=False)
        except (ConfigError, CheckpointError) as exc:
            fail(exc)
    _app()


if __name__ == "__main__":
    main()

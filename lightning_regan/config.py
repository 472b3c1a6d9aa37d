"""Locating the Hydra configs and composing them outside ``@hydra.main`` (tests, notebooks, regan-eval)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``train.yaml`` and the config groups.

    An installed wheel ships them as ``lightning_regan/conf``; a source checkout (editable install) has them in
    ``conf/`` at the repository root.
    """
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "lightning-regan's Hydra configs were not found (looked for lightning_regan/conf and conf/ next to the "
        "package). Reinstall the package: pip install lightning-regan."
    )


def compose_config(overrides: Sequence[str] = (), config_name: str = "train", return_hydra_config: bool = False) -> DictConfig:
    """Compose the training config with Hydra's compose API, as ``regan-train`` would see it.

    Args:
        overrides: Hydra overrides, e.g. ``["data=gaussians", "regularizer=[r1,l2]"]``.
        config_name: Root config file name.
        return_hydra_config: Include the ``hydra`` node (needed to resolve ``${hydra:...}``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)

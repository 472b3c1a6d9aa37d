"""Locating the Hydra configs and composing them outside ``@hydra.main`` (tests, notebooks, regan-eval)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_regan.metric_modes import metric_mode, sweep_direction

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


def has_target(node: Any) -> bool:
    """Whether a config node is something to instantiate (a mapping with ``_target_``)."""
    return isinstance(node, DictConfig) and "_target_" in node


def _checkpoint_every(fid_every: int, max_g_steps: int, n_critic: int) -> int:
    """Lightning global steps between checkpoints: at every FID evaluation, else every tenth of the budget (a G step
    is ``n_critic + 1`` optimizer steps)."""
    return (int(fid_every) or max(1, int(max_g_steps) // 10)) * (int(n_critic) + 1)


def _if_positive(value: Any, then: Any, otherwise: Any = None) -> Any:
    """``then`` when ``value`` > 0, else ``otherwise`` (e.g. a monitor only when the FID monitor runs)."""
    return then if value and int(value) > 0 else otherwise


# Resolvers of conf/callbacks/checkpoint.yaml, train.yaml's stop_mode and the sweeps' direction (registered on import,
# before any config is composed).
for _name, _fn in (("regan.checkpoint_every", _checkpoint_every), ("regan.if_positive", _if_positive),
                   ("regan.metric_mode", metric_mode), ("regan.sweep_direction", sweep_direction)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


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


#: Config nodes that hold named instantiable entries (a group chosen as a list; EarlyTermination's rules).
_NAMED_GROUPS = ("regularizer", "callbacks", "logger", "early_stopping.rules")


def drop_unselected(cfg: DictConfig) -> list[str]:
    """Remove settings for entries that are not chosen, so that every ``experiment=`` preset composes with any choice.

    A preset may tune ``regularizer.r1.weight`` or ``early_stopping.rules.metric_plateau.warmup_g_steps``; when the
    command line then picks ``regularizer=l2`` or ``early_stopping=plateau``, that setting is left without a
    ``_target_``. Such nodes (under ``regularizer``, ``callbacks``, ``logger`` and ``early_stopping.rules``) are removed
    here and named in one info line. Returns their paths.
    """
    dropped: list[str] = []
    with open_dict(cfg):
        for group in _NAMED_GROUPS:
            node = OmegaConf.select(cfg, group)
            if isinstance(node, DictConfig):
                for name in [k for k, v in node.items() if isinstance(v, DictConfig) and "_target_" not in v]:
                    del node[name]
                    dropped.append(f"{group}.{name}")
    if dropped:
        log.info("Settings for entries that are not chosen are ignored: %s.", ", ".join(dropped))
    return dropped

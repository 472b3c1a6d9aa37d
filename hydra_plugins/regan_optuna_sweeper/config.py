"""Structured config of the ``regan_optuna`` sweeper, registered as ``hydra/sweeper=regan_optuna``."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ReganOptunaSweeperConf:
    """Fields of ``hydra.sweeper`` (see ``docs/sweeps.md``).

    ``storage``: Optuna storage URL (``sqlite:///...``, ``postgresql://...``) or a journal file path; ``null``
    puts a journal file ``optuna.journal`` into the sweep directory. ``n_trials``: trials the study should hold
    when the sweep ends (finished ones from an earlier, killed run of the same study count). ``n_jobs``: trials
    launched at once (one launcher batch). ``params``: search space in Hydra's override syntax
    (``interval(a, b)``, ``tag(log, interval(a, b))``, ``choice(a, b)``, ``range(a, b)``) or fixed values.
    """

    _target_: str = "hydra_plugins.regan_optuna_sweeper.sweeper.ReganOptunaSweeper"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    direction: str = "minimize"
    storage: Optional[str] = None
    study_name: str = "regan"
    n_trials: int = 20
    n_jobs: int = 1
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="regan_optuna", node=ReganOptunaSweeperConf,
                             provider="lightning-regan")

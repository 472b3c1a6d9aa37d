"""OptunaPruning: the decision callback that stops a sweep trial whose FID curve an Optuna pruner finds hopeless.

It only reads metrics: at each new evaluation of ``monitor`` (``val/fid``, logged by ``FIDMonitor`` with the G step it
was measured at, ``val/fid_g_step``) it reports the value at that G step to the trial (``Trial.report``) and asks the
study's pruner (``Trial.should_prune``).
The pruner compares the curve with the other trials' at the same G step through the study's storage, so it works
with any launcher whose jobs reach that storage (a journal file on a shared folder, SQLite, an RDB server).
Within the trial, ``EarlyTermination`` keeps its own rules; whichever decides first stops the run, and ``RunSummary``
turns both callbacks' stop records into the run's one ``status``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import lightning as L

from lightning_regan.callbacks.g_step import DECISION, GStepCallback
from lightning_regan.logged import NewEvaluations
from lightning_regan.stopping.base import StopRecord
from lightning_regan.sweep import open_storage

log = logging.getLogger(__name__)


class OptunaPruning(GStepCallback):
    """Report ``monitor`` to an Optuna trial at every evaluation and stop the Trainer when the pruner says so.

    The trial is one the sweep asked for (``hydra/sweeper=regan_optuna`` passes ``optuna_trial.*`` to each
    job); this callback loads it from ``storage`` by ``study_name`` and ``trial_number``. Only rank zero talks
    to the storage; the decision is broadcast so every rank stops together. Steps are G steps.

    Args:
        storage: Optuna storage URL or journal file path (see :func:`open_storage`).
        study_name: Name of the study in ``storage``.
        trial_number: The trial this run is (``Trial.number``).
        pruner: An ``optuna.pruners.BasePruner`` (median, successive halving, Hyperband, ...).
        monitor: Logged metric reported to the trial (lower is better for the default study direction).
        step_key: Logged metric holding the G step ``monitor`` was measured at (a new value there is a new
            evaluation, also when the monitored value repeats, e.g. a stalled generator). Without it in the
            logged metrics, a changed ``monitor`` value counts as a new evaluation at the current G step.

    Attributes:
        pruned: Whether the pruner stopped this run.
        pruned_g_step: The G step of the evaluation that pruned it.
        stop_record: A :class:`~lightning_regan.stopping.StopRecord` (status ``"pruned"``) once it pruned the run.
        reported: ``[(g_step, value), ...]`` reported to the trial by this run.
    """

    stage = DECISION

    def __init__(self, storage: str, study_name: str, trial_number: int, pruner: Any, monitor: str = "val/fid",
                 step_key: str = "val/fid_g_step") -> None:
        super().__init__()
        import optuna

        if not isinstance(trial_number, int) or isinstance(trial_number, bool) or trial_number < 0:
            raise ValueError(
                f"OptunaPruning: trial_number must be an integer >= 0, got {trial_number!r}; run the pruning "
                "callback through a sweep (regan-train hparams_search=...), which passes optuna_trial.number."
            )
        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise ValueError(
                f"OptunaPruning: pruner must be an optuna.pruners.BasePruner, got {type(pruner).__name__}."
            )
        if not isinstance(study_name, str) or not study_name:
            raise ValueError(f"OptunaPruning: study_name must be a non-empty string, got {study_name!r}.")
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial_number
        self.pruner = pruner
        self.monitor = monitor
        self.step_key = step_key
        self.pruned = False
        self.pruned_g_step: Optional[int] = None
        self.reported: list[tuple[int, float]] = []
        self.stop_record: Optional[StopRecord] = None
        self._trial: Any = None
        self._evaluations = NewEvaluations(monitor, step_key)

    # ------------------------------------------------------------------ Optuna
    def _load_trial(self) -> Any:
        """The ``optuna.Trial`` of this run, from the storage (raises a clear error when it is not there)."""
        import optuna

        storage = open_storage(self.storage)
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError as err:
            raise ValueError(f"OptunaPruning: no study {self.study_name!r} in storage {self.storage!r}.") from err
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        except KeyError as err:
            raise ValueError(
                f"OptunaPruning: study {self.study_name!r} has no trial number {self.trial_number}."
            ) from err
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
        return optuna.trial.Trial(study, trial_id)

    @staticmethod
    def should_prune_trial(trial: Any, g_step: int, value: float) -> bool:
        """Report ``value`` at ``g_step`` to ``trial`` and return the pruner's decision (the whole rule: Optuna's)."""
        trial.report(value, step=g_step)
        return bool(trial.should_prune())

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self._trial is None:
            self._trial = self._load_trial()  # fails before training when the storage or trial is wrong

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or self.pruned:
            return
        # The value and G step are the same on every rank, so every rank enters the broadcast together.
        evaluation = self._evaluations.read(trainer.callback_metrics, g_step)
        if evaluation is None:
            return
        g_step, value = evaluation
        self.reported.append((g_step, value))
        decision = False
        if trainer.is_global_zero:
            # Optuna refuses NaN as an intermediate value; a NaN FID is the worst, which is what inf says.
            decision = self.should_prune_trial(self._trial, g_step, value if math.isfinite(value) else math.inf)
        decision = bool(trainer.strategy.broadcast(decision, src=0))
        if decision:
            self.pruned, self.pruned_g_step = True, g_step
            trainer.should_stop = True
            self.stop_record = StopRecord("pruned", "pruned", g_step, type(self).__name__,
                                          f"pruned at G step {g_step} ({self.monitor} = {value:.4g})")
            if trainer.is_global_zero:
                log.info("OptunaPruning: trial %d pruned at G step %d (%s = %.4g). Signaling Trainer to stop.",
                         self.trial_number, g_step, self.monitor, value)

    def state_dict(self) -> dict[str, Any]:
        return {"reported": [list(r) for r in self.reported], "pruned": self.pruned,
                "pruned_g_step": self.pruned_g_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reported = [(int(g), float(v)) for g, v in state_dict.get("reported") or []]
        if self.reported:
            self._evaluations.last_step, self._evaluations.last_value = self.reported[-1]
        self.pruned = bool(state_dict.get("pruned", False))
        self.pruned_g_step = state_dict.get("pruned_g_step")
        # A pruned trial does not resume training; the record says so again if it does.
        self.stop_record = (StopRecord("pruned", "pruned", int(self.pruned_g_step), type(self).__name__)
                            if self.pruned and self.pruned_g_step is not None else None)

    # ------------------------------------------------------------------ summary.json
    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Fields this callback adds to ``summary.json`` (the ``"pruned"`` status comes from ``stop_record``)."""
        fields: dict[str, Any] = {
            "optuna": {"study_name": self.study_name, "trial_number": self.trial_number,
                       "pruner": type(self.pruner).__name__, "pruned_g_step": self.pruned_g_step,
                       "reported": [list(r) for r in self.reported]},
        }
        return fields


__all__ = ["OptunaPruning"]

"""ReganOptunaSweeper: a Hydra sweeper on Optuna's ask/tell whose trials can be pruned while they train.

The sweeper asks the study for ``n_jobs`` trials at a time, launches them through whatever Hydra launcher is
configured (basic, joblib, submitit local or SLURM) and tells the study each result. Each job gets
``optuna_trial.{number,study_name,storage}`` as overrides; the ``OptunaPruning`` callback in the job reports the
curve of its stop metric (``val/mmd`` by default) to that trial through the shared storage and stops the run when the
study's pruner says so. A job whose ``summary.json`` says ``"pruned"`` is told as ``TrialState.PRUNED``.

Resume: the study lives in its storage (by default a journal file in the sweep directory), so running the same
command again with the same ``hydra.sweep.dir`` (or storage) continues it: finished trials (complete, pruned,
failed) are kept and count towards ``n_trials``; trials a killed sweep left running are marked failed and their
parameters asked again first; a seeded sampler is reseeded (seed + trials so far) so it draws new configurations.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Name of the default journal file in the sweep directory.
JOURNAL_NAME = "optuna.journal"
#: Study user attribute: numbers of the trials a killed sweep left running (failed, their parameters asked again).
REQUEUED = "requeued"


class TrialsFailed(CompactHydraException):
    """Some trials of this sweep failed; the others' results are in the study and the sweep table. Hydra prints
    the message as one line and the sweep exits with code 1."""


def distribution_for(override: Override) -> Any:
    """The Optuna distribution of a sweep override (``interval``, ``tag(log, interval)``, ``choice``, ``range``).

    Raises:
        ValueError: a sweep type Optuna cannot sample.
    """
    import optuna

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        if isinstance(value, ChoiceSweep) and "log" in value.tags:
            raise ValueError(f"{key}: tag(log, ...) applies to interval(...), not to a choice.")
        return optuna.distributions.CategoricalDistribution(list(override.sweep_string_iterator()))
    raise ValueError(f"{key}: the regan_optuna sweeper cannot sample {override.input_line!r}; use interval(a, b), "
                     "tag(log, interval(a, b)), choice(a, b, ...) or range(a, b).")


def split_search_space(overrides: Sequence[Override]) -> tuple[dict[str, Any], list[str]]:
    """``(search space, fixed overrides)``: sweep overrides become Optuna distributions, the rest stay as they are."""
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution_for(override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return space, fixed


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class ReganOptunaSweeper(Sweeper):
    """Hydra sweeper: Optuna ask/tell over any launcher, trials pruned by the jobs' ``OptunaPruning`` callback.

    Args:
        sampler: An ``optuna.samplers.BaseSampler`` or its config (``_target_``).
        direction: ``"minimize"`` or ``"maximize"`` the value the task returns.
        storage: Storage URL or journal file path; ``None``: ``<sweep dir>/optuna.journal``.
        study_name: Study name in the storage.
        n_trials: Trials the study holds when the sweep ends (earlier finished ones count).
        n_jobs: Trials launched together (one launcher batch).
        params: Search space, ``{key: override value}`` in Hydra's sweep syntax; command-line sweeps add to it.
    """

    def __init__(self, sampler: Any = None, direction: str = "minimize", storage: Optional[str] = None,
                 study_name: str = "regan", n_trials: int = 20, n_jobs: int = 1,
                 params: Optional[dict[str, str]] = None) -> None:
        super().__init__()
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction must be minimize or maximize, got {direction!r}.")
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"hydra.sweeper.{name} must be an integer >= 1, got {value!r}.")
        self.sampler_config = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None
        self.study: Any = None
        #: Set when the sampler stopped the study (its search space is exhausted).
        self.exhausted = False
        #: ``(trial number, error)`` of the trials that failed in this sweep (not the ones a killed sweep left).
        self.failed: list[tuple[int, str]] = []
        #: Trials told to the study in this sweep.
        self.told = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------ study
    def storage_location(self, sweep_dir: Path) -> str:
        """The storage as one absolute string every job can open (URL, or the journal file's absolute path)."""
        if self.storage in (None, ""):
            return str((sweep_dir / JOURNAL_NAME).resolve())
        storage = str(self.storage)
        return storage if "://" in storage else str(Path(storage).expanduser().resolve())

    def sampler_for(self, n_existing_trials: int) -> Any:
        """The sampler; a seeded one resuming a study with trials gets ``seed + n_existing_trials`` so that it does
        not draw the configurations of the first run again (a restarted RNG repeats its sequence)."""
        import optuna

        config = self.sampler_config
        if config is None or isinstance(config, optuna.samplers.BaseSampler):
            return config
        if n_existing_trials and config.get("seed") is not None:
            config = OmegaConf.merge(config, {"seed": int(config["seed"]) + n_existing_trials})
        return instantiate(config)

    def _existing_trials(self, storage: Any) -> int:
        import optuna

        try:
            return len(optuna.load_study(study_name=self.study_name, storage=storage).trials)
        except KeyError:  # no such study yet
            return 0

    def _requeue_orphans(self, study: Any) -> int:
        """Trials a killed sweep left running: mark them failed and ask their parameters again first."""
        import optuna

        orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if orphans:
            requeued = list(study.user_attrs.get(REQUEUED, [])) + [t.number for t in orphans]
            study.set_user_attr(REQUEUED, requeued)
        for trial in orphans:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
        if orphans:
            log.info("Resuming study %r: trials %s were left running by a killed sweep; their parameters run again.",
                     study.study_name, [t.number for t in orphans])
        return len(orphans)

    @staticmethod
    def finished_trials(study: Any) -> list[Any]:
        """Finished trials that count towards ``n_trials`` (not the ones a killed sweep left running)."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        requeued = set(study.user_attrs.get(REQUEUED, []))
        return [t for t in study.get_trials(deepcopy=False, states=states) if t.number not in requeued]

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from lightning_regan.sweep import open_storage, write_sweep_report

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        cli = parser.parse_overrides(list(arguments))
        space, _ = split_search_space(params)
        cli_space, fixed = split_search_space(cli)
        space.update(cli_space)
        fixed_keys = {o.split("=", 1)[0].lstrip("+~") for o in fixed}
        space = {k: v for k, v in space.items() if k.lstrip("+~") not in fixed_keys}  # a fixed value wins
        if not space:
            raise ValueError("regan_optuna sweeper: empty search space; set hydra.sweeper.params or sweep a key on "
                             "the command line, e.g. 'module.g_optimizer.lr=tag(log, interval(1e-4, 1e-2))'.")

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage_url = self.storage_location(sweep_dir)
        storage = open_storage(storage_url)
        study = optuna.create_study(study_name=self.study_name, storage=storage,
                                    sampler=self.sampler_for(self._existing_trials(storage)), direction=self.direction,
                                    load_if_exists=True)
        self.study = study
        self._requeue_orphans(study)
        done = len(self.finished_trials(study))
        if done:
            log.info("Study %r in %s already holds %d finished trials of %d.", self.study_name, storage_url, done,
                     self.n_trials)
        log.info("regan_optuna sweeper: study %r, storage %s, %d trials, %d at a time; search space: %s",
                 self.study_name, storage_url, self.n_trials, self.n_jobs,
                 ", ".join(f"{k}: {v}" for k, v in space.items()))

        returns: list[Sequence[JobReturn]] = []
        self.exhausted = False
        self.failed, self.told = [], 0
        while done < self.n_trials and not self.exhausted:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [
                [*fixed, *(f"{k}={_override_value(v)}" for k, v in t.params.items()),
                 f"++optuna_trial.number={t.number}", f"++optuna_trial.study_name={self.study_name}",
                 f"++optuna_trial.storage='{storage_url}'"]
                for t in trials
            ]
            self.validate_batch_is_legal(batch)
            # Job directories are named by trial number when numbers are consecutive (one sweeper per study).
            numbers = [t.number for t in trials]
            consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            if consecutive:
                results = list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
            else:
                results = [r for t, overrides in zip(trials, batch)
                           for r in self.launcher.launch([overrides], initial_job_idx=t.number)]
            for trial, ret in zip(trials, results):
                try:
                    self._tell(study, trial, ret)
                except RuntimeError as err:
                    # Grid / brute-force samplers call study.stop() once the space is exhausted; Optuna has
                    # stored the trial's result by then (tell's `finally`), so the sweep just ends.
                    if "Study.stop" not in str(err):
                        raise
                    self.exhausted = True
            if self.exhausted:
                log.info("The sampler has visited its whole search space: the sweep ends after %d trials.",
                         done + len(trials))
            returns.append(results)
            done += len(trials)

        paths = write_sweep_report(study, sweep_dir)
        print((sweep_dir / "sweep.md").read_text(), flush=True)
        log.info("Sweep table: %s", ", ".join(str(p) for p in paths.values() if p is not None))
        if self.failed:
            # The other trials' results are kept; the exit code tells a scheduler or a script that one failed.
            first_number, first_error = self.failed[0]
            raise TrialsFailed(
                f"regan_optuna sweep: {len(self.failed)} of {self.told} trials failed (trial "
                f"{first_number}: {first_error}); the other results are in {sweep_dir / 'sweep.md'}."
            )
        return returns

    def _tell(self, study: Any, trial: Any, ret: JobReturn) -> None:
        """Record the job's outcome in the study: complete with its value, pruned, or failed."""
        import optuna

        self.told += 1
        summary: dict[str, Any] = {}
        output_dir: Optional[Path] = None
        if ret.hydra_cfg is not None:
            output_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
            trial.set_user_attr("output_dir", str(output_dir))
            path = output_dir / "summary.json"
            if path.is_file():
                try:
                    summary = json.loads(path.read_text())
                except json.JSONDecodeError:
                    summary = {}
        if ret.cfg is not None and "max_g_steps" in ret.cfg:
            trial.set_user_attr("max_g_steps", int(ret.cfg.max_g_steps))
        for key in ("status", "stop_reason", "g_steps", "stop_metric", "best_value", "best_g_step", "best_fid",
                    "best_fid_step", "stopped_g_step"):
            if key in summary:
                trial.set_user_attr(key, summary[key])
        try:
            value = ret.return_value  # re-raises the job's exception when it failed
        except BaseException as err:  # a failed trial must not end the sweep
            error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            trial.set_user_attr("error", error)
            log.error("Trial %d failed: %s", trial.number, error)
            self.failed.append((trial.number, error))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        if summary.get("status") == "pruned":
            # Optuna keeps the last reported value (of the stop metric) as a pruned trial's value.
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        if not isinstance(value, (int, float)) or math.isnan(value):
            self.failed.append((trial.number, f"the run returned {value!r}, not a number"))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        study.tell(trial, float(value))

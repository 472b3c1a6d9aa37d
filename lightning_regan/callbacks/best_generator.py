"""BestGenerator: keep CPU copies of the generator at the best evaluations of a metric, confirm the best with a larger
sample when training ends, and hand it back."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional, Protocol, runtime_checkable

import lightning as L
from torch import Tensor, nn

from lightning_regan.callbacks.g_step import GStepCallback, g_step_budget, g_steps_of
from lightning_regan.logged import NewEvaluations
from lightning_regan.stopping.base import check_keys, check_mode
from lightning_regan.validation import check_bool, check_int

log = logging.getLogger(__name__)

RESTORE_CHOICES = ("on_stop", "always", "never")
#: ``confirm_samples=None``: this many times the monitor's ``num_samples``.
CONFIRM_FACTOR = 4
STATE_VERSION = 2


@runtime_checkable
class Scorer(Protocol):
    """An evaluation callback that can re-measure the evaluated generator with another sample (``FIDMonitor``)."""

    num_samples: int
    seed: int

    @property
    def scored_metrics(self) -> tuple[str, ...]:
        """The logged keys :meth:`score` returns."""

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, num_samples: int, seed: int) -> dict[str, float]:
        """The metrics of ``pl_module.generate`` on ``num_samples`` inputs drawn under ``seed`` (collective)."""


class BestGenerator(GStepCallback):
    """Keep the generators of the ``top_k`` best ``monitor`` values, confirm the best of them with a larger sample when
    training ends, and load it back.

    At each new evaluation of ``monitor`` (a new ``<monitor>_g_step``, else a changed value) that enters the ``top_k``
    best (lower for ``mode="min"``, higher for ``"max"``), a CPU copy of ``pl_module.eval_generator`` (the EMA copy
    when EMA is on) is taken, if the evaluation is of the current G step (an older evaluation's generator no longer
    exists); the worst candidate then drops out.

    When training ends, the candidates are re-scored with the callback in ``trainer.callbacks`` that logs ``monitor``
    and can score a generator (a :class:`Scorer`: ``FIDMonitor``, whose ``score`` computes the same metric with the
    same features): ``confirm_samples`` fresh inputs drawn under ``confirm_seed`` (the same for every candidate, never
    the monitor's), on every rank, the choice taken on rank zero and broadcast. The confirmation runs at every end of
    training; whether its winner is loaded back into ``eval_generator`` follows ``restore``: ``"on_stop"`` only when a
    callback stopped the run before its budget (early termination, pruning; at the budget the last generator stays
    and ``summary.json`` says which candidate the confirmation preferred), ``"always"`` also at the budget,
    ``"never"`` not at all. ``top_k=1``, ``confirm_samples=0`` or no such monitor: the best evaluation is handed back
    unconfirmed, as before 0.4. If the monitor's best has no copy, nothing is handed back.

    The copies (and their values) are in this callback's checkpoint state, so a resumed run confirms the same
    candidates; a checkpoint with the single copy of earlier versions loads as one candidate. Each checkpoint then
    holds ``top_k`` copies of the generator.

    Args:
        monitor: The metric (``val/fid`` here; ``${stop_metric}``, i.e. ``val/mmd``, in the configs).
        mode: ``"min"`` when lower is better, ``"max"`` when higher is.
        restore: ``"on_stop"``, ``"always"`` or ``"never"`` (only track and confirm).
        verbose: Log new bests, the confirmation and the restore (rank zero).
        step_key: The logged G step of each evaluation (``None``: ``<monitor>_g_step``).
        top_k: Candidates kept (``1``: no confirmation).
        confirm_samples: Generated samples per candidate in the confirmation (``None``: 4 x the monitor's
            ``num_samples``; ``0``: no confirmation, one copy kept).
        confirm_seed: Seed of the confirmation's inputs (``None``: the monitor's ``seed`` + 1); must differ from the
            monitor's.

    Attributes:
        best_value: The best monitored value seen, or ``None``; ``best_g_step`` its G step.
        best_generator_step: G step of the kept copy of the best value (``None``: no copy of the best).
        candidates: ``[{"g_step", "value", "weights"}, ...]``, best monitored value first (``weights`` ``None`` where
            no copy could be taken).
        confirmation: After training ends, ``{"metric", "samples", "seed", "time_s", "winner_g_step", "changed",
            "candidates": [{"g_step", "monitor_value", "confirm_value"}, ...]}``, or ``None`` (not confirmed).
        restored: Whether a copy was loaded back; ``restored_into`` says where (``generator``/``ema_generator``),
            ``restored_g_step`` which.
    """

    def __init__(self, monitor: str = "val/fid", mode: str = "min", restore: str = "on_stop",
                 verbose: bool = True, step_key: Optional[str] = None, top_k: int = 3,
                 confirm_samples: Optional[int] = None, confirm_seed: Optional[int] = None) -> None:
        super().__init__()
        self.monitor = check_keys("BestGenerator", "monitor", monitor)[0]
        self.mode = check_mode("BestGenerator", mode)
        if restore not in RESTORE_CHOICES:
            raise ValueError(f"BestGenerator: restore must be one of {', '.join(map(repr, RESTORE_CHOICES))}, "
                             f"got {restore!r}.")
        self.restore = restore
        self.verbose = check_bool("BestGenerator", "verbose", verbose)
        self.top_k = check_int("BestGenerator", "top_k", top_k, 1)
        self.confirm_samples = check_int("BestGenerator", "confirm_samples", confirm_samples, 0, optional=True)
        if self.confirm_samples == 1:
            raise ValueError("BestGenerator: confirm_samples must be 0 (off), >= 2 or null (4 x the monitor's "
                             "num_samples), got 1.")
        self.confirm_seed = check_int("BestGenerator", "confirm_seed", confirm_seed, 0, optional=True)
        self.best_value: Optional[float] = None
        self.best_g_step: Optional[int] = None
        self.candidates: list[dict[str, Any]] = []
        self.confirmation: Optional[dict[str, Any]] = None
        self.restored = False
        self.restored_into: Optional[str] = None
        self.restored_g_step: Optional[int] = None
        self._scorer: Optional[Scorer] = None
        self._looked_up = False  # whether on_train_start searched trainer.callbacks for the scorer
        self._winner: Optional[dict[str, Any]] = None
        step_key = f"{self.monitor}_g_step" if step_key is None else check_keys("BestGenerator", "step_key", step_key)[0]
        self._evaluations = NewEvaluations(self.monitor, step_key)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def confirming(self) -> bool:
        """Whether the candidates will be confirmed (``top_k > 1``, ``confirm_samples != 0`` and, once training
        started, a monitor that scores ``monitor``)."""
        return self.top_k > 1 and self.confirm_samples != 0 and (self._scorer is not None or not self._looked_up)

    @property
    def best_generator_step(self) -> Optional[int]:
        """G step of the copy of the best value, ``None`` when the best has no copy."""
        top = self.candidates[0] if self.candidates else None
        return top["g_step"] if top is not None and top["weights"] is not None else None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "best_value": self.best_value, "best_g_step": self.best_g_step,
                "candidates": [dict(c) for c in self.candidates],
                "last_step": self._evaluations.last_step, "last_value": self._evaluations.last_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value")
        self.best_g_step = state_dict.get("best_g_step")
        if "candidates" in state_dict:
            self.candidates = [dict(c) for c in state_dict["candidates"]]
        else:  # version 1: one copy of the best (or none)
            weights = state_dict.get("weights")
            step = state_dict.get("best_generator_step")
            self.candidates = [] if self.best_value is None else [
                {"g_step": step if weights is not None else self.best_g_step, "value": self.best_value,
                 "weights": weights}]
        self._evaluations.last_step = state_dict.get("last_step")
        self._evaluations.last_value = state_dict.get("last_value")

    # ------------------------------------------------------------------ bookkeeping
    @property
    def _slots(self) -> int:
        return self.top_k if self.confirming else 1

    def _beats(self, value: float, other: Optional[float]) -> bool:
        if other is None:
            return True
        return value < other if self.mode == "min" else value > other

    def offer(self, g_step: int, value: float, weights: Optional[dict[str, Tensor]]) -> bool:
        """Record an evaluation: it becomes a candidate if it is among the ``top_k`` best (strictly better than the
        worst kept when full). ``weights``: a CPU copy of the evaluated generator, ``None`` when none exists.
        Returns whether it was kept."""
        if not math.isfinite(value):
            return False
        if self._beats(value, self.best_value):
            self.best_value, self.best_g_step = value, g_step
        full = len(self.candidates) >= self._slots
        if full and not self._beats(value, self.candidates[-1]["value"]):
            return False
        at = next((i for i, c in enumerate(self.candidates) if self._beats(value, c["value"])), len(self.candidates))
        self.candidates.insert(at, {"g_step": int(g_step), "value": float(value), "weights": weights})
        del self.candidates[self._slots:]
        return at < len(self.candidates)

    def _would_keep(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return len(self.candidates) < self._slots or self._beats(value, self.candidates[-1]["value"])

    def _ingest(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        now = g_steps_of(trainer, pl_module)
        new = self._evaluations.read(trainer.callback_metrics, now)
        if new is None or not self._would_keep(new[1]):
            return
        g_step, value = new
        new_best = self._beats(value, self.best_value)
        # Only a copy taken at the evaluated step is that generator (an older evaluation's generator is gone).
        generator = getattr(pl_module, "eval_generator", None)
        weights = _cpu_copy(generator) if generator is not None and g_step == now else None
        self.offer(g_step, value, weights)
        if new_best and self.verbose and trainer.is_global_zero:
            log.info("BestGenerator: new best %s = %.4g at G step %d.", self.monitor, value, g_step)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restored, self.restored_into, self.restored_g_step, self.confirmation = False, None, None, None
        self._winner = None
        self._scorer = next((cb for cb in trainer.callbacks if isinstance(cb, Scorer)
                             and self.monitor in cb.scored_metrics), None)
        self._looked_up = True
        if self._scorer is not None and self.confirm_seed is not None and self.confirm_seed == self._scorer.seed:
            raise ValueError(f"BestGenerator: confirm_seed={self.confirm_seed} is the monitor's seed; the confirmation "
                             "needs fresh inputs: choose another (or null).")
        if self._scorer is None and self.top_k > 1 and self.confirm_samples != 0 and self.verbose \
                and trainer.is_global_zero:
            log.info("BestGenerator: no callback scores %s (an FIDMonitor that logs it); the best evaluation is "
                     "handed back unconfirmed.", self.monitor)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # An evaluation logged after our batch end (a monitor registered after us): the generator has not moved since.
        self._ingest(trainer, pl_module)

    def on_g_step(self, trainer: L.Trainer, pl_module: L.LightningModule, g_step: int) -> None:
        self._ingest(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._ingest(trainer, pl_module)  # a final evaluation logged after our last batch end
        if self.best_value is None:
            return
        target = getattr(pl_module, "eval_generator", None)
        top = self.candidates[0] if self.candidates else None
        if top is None or top["weights"] is None or target is None:
            if self.restore != "never" and self._restoring(trainer, pl_module) and self.verbose \
                    and trainer.is_global_zero:
                log.info("BestGenerator: no copy of the generator of the best %s (G step %s) was taken; not restored.",
                         self.monitor, self.best_g_step)
            return
        winner = top
        with_copies = [c for c in self.candidates if c["weights"] is not None]
        if self.confirming and self._scorer is not None and len(with_copies) > 1:
            winner = self._confirm(trainer, pl_module, target, with_copies)
        self._winner = winner
        if self.restore == "never" or not self._restoring(trainer, pl_module):
            return
        target.load_state_dict(winner["weights"])
        ema = getattr(pl_module, "ema_generator", None)
        self.restored_into = "ema_generator" if ema is not None and target is getattr(ema, "module", None) else "generator"
        self.restored, self.restored_g_step = True, winner["g_step"]
        if self.verbose and trainer.is_global_zero:
            log.info("BestGenerator: restored the %s of G step %d (%s = %.4g%s).", self.restored_into, winner["g_step"],
                     self.monitor, winner["value"], "" if self.confirmation is None else
                     f", confirmed with {self.confirmation['samples']} samples")

    def _restoring(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether ``restore`` hands a generator back at this end of training."""
        if self.restore == "never":
            return False
        if self.restore == "always":
            return True
        budget = g_step_budget(trainer, pl_module)
        return bool(trainer.should_stop and (budget is None or g_steps_of(trainer, pl_module) < budget))

    def _confirm(self, trainer: L.Trainer, pl_module: L.LightningModule, target: nn.Module,
                 candidates: list[dict[str, Any]]) -> dict[str, Any]:
        """Re-score ``candidates`` with the monitor and return the best (rank zero's choice on every rank).
        ``target`` is left as it was."""
        assert self._scorer is not None
        scorer = self._scorer
        samples = self.confirm_samples if self.confirm_samples is not None else CONFIRM_FACTOR * int(scorer.num_samples)
        seed = self.confirm_seed if self.confirm_seed is not None else int(scorer.seed) + 1
        start = time.perf_counter()
        final = _cpu_copy(target)
        values = []
        try:
            for candidate in candidates:
                target.load_state_dict(candidate["weights"])
                values.append(float(scorer.score(trainer, pl_module, samples, seed)[self.monitor]))
        finally:
            target.load_state_dict(final)
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        index = 0
        for i in finite:
            if not math.isfinite(values[index]) or self._beats(values[i], values[index]):
                index = i
        if trainer.world_size > 1:  # one choice on every rank, whatever the ranks' rounding
            index = int(trainer.strategy.broadcast(index, src=0))
        winner = candidates[index]
        self.confirmation = {
            "metric": self.monitor, "samples": samples, "seed": seed, "time_s": time.perf_counter() - start,
            "winner_g_step": winner["g_step"], "changed": index != 0,
            "candidates": [{"g_step": c["g_step"], "monitor_value": c["value"], "confirm_value": v}
                           for c, v in zip(candidates, values)],
        }
        if self.verbose and trainer.is_global_zero:
            log.info("BestGenerator: confirmed %d candidates with %d samples each (%.1f s): %s; G step %d wins%s.",
                     len(candidates), samples, self.confirmation["time_s"],
                     ", ".join(f"G step {c['g_step']}: {c['value']:.4g} -> {v:.4g}" for c, v in zip(candidates, values)),
                     winner["g_step"], " (not the monitor's best)" if index else "")
        return winner

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``summary.json``'s ``best_generator`` entry.

        ``confirmation`` is :attr:`confirmation`; ``winner_g_step`` the G step of the generator handed back, or that
        would be with ``restore="always"`` (the confirmation's winner, else the monitor's best with a copy);
        ``checkpoint_best_holds_winner`` whether the best checkpoint of a ``ModelCheckpoint`` on the same metric
        (``checkpoints/best.ckpt``: the monitor's best) holds that generator (``None``: no winner or no such
        checkpoint).
        """
        return {"best_generator": {
            "monitor": self.monitor, "mode": self.mode, "restore": self.restore, "best_value": self.best_value,
            "best_g_step": self.best_g_step, "restored": self.restored, "restored_into": self.restored_into,
            "restored_g_step": self.restored_g_step, "top_k": self.top_k, "confirmation": self.confirmation,
            "winner_g_step": None if self._winner is None else self._winner["g_step"],
            "checkpoint_best_holds_winner": self._checkpoint_best_holds_winner(trainer),
        }}

    def _checkpoint_best_holds_winner(self, trainer: L.Trainer) -> Optional[bool]:
        if self._winner is None:
            return None
        for cb in trainer.checkpoint_callbacks:
            score = getattr(cb, "best_model_score", None)
            if getattr(cb, "monitor", None) == self.monitor and getattr(cb, "best_model_path", "") and score is not None:
                # the checkpoint of the best logged value: the same float32 number as the winner's if it is the winner
                return math.isclose(float(score), self._winner["value"], rel_tol=1e-6, abs_tol=0.0)
        return None


def _cpu_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


__all__ = ["BestGenerator", "Scorer"]

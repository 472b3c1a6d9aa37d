"""ModeCoverageMonitor: modes covered and share of high-quality samples on 2-D Gaussian mixtures."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from lightning_regan.callbacks.g_step import EVALUATION, GStepCallback, g_steps_of, is_due, publish_metrics
from lightning_regan.data.gaussians import MIN_FRACTION, mode_coverage
from lightning_regan.inputs import FixedInputs, generate
from lightning_regan.protocol import GANModuleLike
from lightning_regan.validation import check_int, check_number, is_number


class ModeCoverageMonitor(GStepCallback):
    """Log ``val/modes_covered`` and ``val/hq_fraction`` every ``every_n_g_steps`` G steps.

    ``num_samples`` points are decoded with ``pl_module.generate`` from noise drawn under a fixed seed, and scored
    with :func:`~lightning_regan.data.gaussians.mode_coverage` against the mixture's ``centers`` and ``std``
    (taken from ``trainer.datamodule``, e.g. a :class:`~lightning_regan.data.GaussianMixtureDataModule`, unless
    given here). Every rank computes the same value and publishes it (``publish_metrics``) with
    ``val/modes_g_step``. When training ends the final G step is scored too, unless it was just scored.

    Args:
        every_n_g_steps: Evaluate every this many G steps (``0``: only when training ends).
        num_samples: Generated points per evaluation (2,500 in VEEGAN/PacGAN).
        n_std: A sample is high quality within ``n_std`` standard deviations of its nearest center.
        min_count: High-quality samples a mode needs to count as covered; ``None`` uses ``min_fraction``.
        min_fraction: Threshold as a fraction of ``num_samples`` (default 20/2500).
        centers: Mixture centers ``(K, 2)`` (default: ``trainer.datamodule.centers``).
        std: Component standard deviation (default: ``trainer.datamodule.std``).
        seed: Seed of the evaluation noise.

    Attributes:
        history: ``[(g_step, {"modes_covered", "num_modes", "hq_fraction", "counts"}), ...]``.
        last: The latest result, or ``None``.
    """

    stage = EVALUATION

    def __init__(
        self,
        every_n_g_steps: int = 500,
        num_samples: int = 2500,
        n_std: float = 3.0,
        min_count: Optional[int] = None,
        min_fraction: float = MIN_FRACTION,
        centers: Optional[Tensor] = None,
        std: Optional[float] = None,
        seed: int = 0,
    ) -> None:
        check_int("ModeCoverageMonitor", "every_n_g_steps", every_n_g_steps, 0)
        check_int("ModeCoverageMonitor", "num_samples", num_samples, 1)
        check_number("ModeCoverageMonitor", "n_std", n_std, 0.0, strict=True)
        check_int("ModeCoverageMonitor", "min_count", min_count, 1, optional=True)
        if not (is_number(min_fraction) and 0 < min_fraction <= 1):  # half-open: no helper for (0, 1]
            raise ValueError(f"ModeCoverageMonitor: min_fraction must be in (0, 1], got {min_fraction!r}.")
        self.every_n_g_steps = every_n_g_steps
        self.num_samples = num_samples
        self.n_std = n_std
        self.min_count = min_count
        self.min_fraction = min_fraction
        self.centers = None if centers is None else torch.as_tensor(centers, dtype=torch.float32)
        self.std = std
        self.seed = seed
        self.history: list[tuple[int, dict[str, Any]]] = []
        self._fixed_inputs = FixedInputs(num_samples, seed)

    @property
    def last(self) -> Optional[dict[str, Any]]:
        return self.history[-1][1] if self.history else None

    def setup(self, trainer: L.Trainer, pl_module: GANModuleLike, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if self.centers is None and getattr(datamodule, "centers", None) is not None:
            self.centers = torch.as_tensor(datamodule.centers, dtype=torch.float32)
        if self.std is None and getattr(datamodule, "std", None) is not None:
            self.std = float(datamodule.std)
        if self.centers is None or self.std is None:
            raise ValueError(
                "ModeCoverageMonitor needs the mixture's centers and std: train on a GaussianMixtureDataModule "
                "(data=gaussians or data=gaussians_grid) or pass centers=... and std=...; remove the callback for image data."
            )

    def evaluate(self, pl_module: GANModuleLike) -> dict[str, Any]:
        """Score ``num_samples`` generated points (fixed seeded noise); does not log."""
        if self.centers is None or self.std is None:
            raise RuntimeError("ModeCoverageMonitor.evaluate: centers/std are unknown; call setup first or pass them.")
        samples = generate(pl_module, *self._fixed_inputs(pl_module))
        if samples.dim() != 2:
            raise ValueError(
                f"ModeCoverageMonitor: the generator must output 2-D points (N, 2), got {tuple(samples.shape)}; "
                "it only applies to Gaussian-mixture data."
            )
        return mode_coverage(samples, self.centers, self.std, n_std=self.n_std, min_count=self.min_count, min_fraction=self.min_fraction)

    def on_g_step(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> None:
        if is_due(g_step, self.every_n_g_steps):
            self._record(trainer, pl_module, g_step, self.evaluate(pl_module), in_training=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: GANModuleLike) -> None:
        g = g_steps_of(trainer, pl_module)
        if not self.history or self.history[-1][0] != g:
            self._record(trainer, pl_module, g, self.evaluate(pl_module), in_training=False)

    def _record(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int, result: dict[str, Any],
                in_training: bool) -> None:
        self.history.append((g_step, result))
        metrics = {f"val/{key}": float(result[key]) for key in ("modes_covered", "hq_fraction")}
        metrics["val/modes_g_step"] = float(g_step)
        publish_metrics(trainer, pl_module, metrics, in_training)

    def summary_fields(self, trainer: L.Trainer, pl_module: GANModuleLike) -> dict[str, Any]:
        """``mode_coverage`` for ``summary.json``: modes covered and high-quality share, final and over training."""
        if not self.history:
            return {}
        history = [[int(g), int(r["modes_covered"]), float(r["hq_fraction"])] for g, r in self.history]
        final = self.history[-1][1]
        return {"mode_coverage": {
            "num_modes": int(final["num_modes"]), "modes_covered": int(final["modes_covered"]),
            "hq_fraction": float(final["hq_fraction"]), "max_modes_covered": max(h[1] for h in history),
            "history": history,
        }}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [(g, dict(r)) for g, r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(g), dict(r)) for g, r in state_dict.get("history", [])]


__all__ = ["ModeCoverageMonitor"]

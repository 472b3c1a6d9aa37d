"""OverfittingMonitor: how much better D knows the training reals than reals it never saw (ADA's figure 1 and r_v)."""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_regan.callbacks.g_step import EVALUATION, GStepCallback, g_steps_of, is_due, publish_metrics
from lightning_regan.inputs import FixedInputs, batch_labels, batch_samples, generate
from lightning_regan.protocol import GANModuleLike
from lightning_regan.validation import check_int

log = logging.getLogger(__name__)

#: The logged names: D's mean logit on training reals, on held-out reals, their difference, and the G step.
D_TRAIN_KEY, D_HELDOUT_KEY, D_GAP_KEY, D_GAP_STEP_KEY = "val/d_train", "val/d_heldout", "val/d_gap", "val/d_gap_g_step"
#: D's mean logit on generated samples, and ADA's r_v = (d_train - d_heldout) / (d_train - d_generated).
D_GENERATED_KEY, D_RV_KEY = "val/d_generated", "val/d_rv"


def overfitting_rv(d_train: float, d_heldout: float, d_generated: float) -> Optional[float]:
    """ADA's r_v (Karras et al. 2020, eq. 1): where held-out reals sit between the training reals (0: D scores them
    alike, no overfitting) and the generated samples (1: D scores unseen reals like fakes; above 1: below them, as when
    G reproduces the memorized images). ``None`` while D does not score the training reals above the generated ones
    (the ratio has no meaning then); noisy while that margin is small."""
    separation = d_train - d_generated
    return (d_train - d_heldout) / separation if separation > 0 else None


def take_samples(dataset: Dataset, n: int, seed: int) -> tuple[Tensor, Optional[Tensor]]:
    """``n`` items of ``dataset`` (all when it has fewer) drawn without replacement under ``seed``: samples and labels
    (``None`` for unlabelled items)."""
    size = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [dataset[i] for i in order]
    x = torch.stack([batch_samples(item) for item in items])
    labels = [batch_labels(item) for item in items]
    y = None if any(label is None for label in labels) else torch.stack([torch.as_tensor(label) for label in labels])
    return x, y


@torch.no_grad()
def mean_logit(pl_module: Any, x: Tensor, y: Optional[Tensor] = None, batch_size: int = 256) -> float:
    """D's mean logit on ``x`` (labels ``y`` for a conditional D), in eval mode, without augmentation or gradients;
    D's train/eval mode is restored afterwards."""
    d = pl_module.discriminator
    was_training = d.training
    d.eval()
    try:
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(pl_module.device)
            yb = None if y is None or not pl_module.conditional else y[start:start + batch_size].to(pl_module.device)
            out = pl_module.run_discriminator(xb, yb) if hasattr(pl_module, "run_discriminator") else (
                d(xb) if yb is None else d(xb, yb))
            total += float(out.double().sum())
        return total / len(x)
    finally:
        d.train(was_training)


class OverfittingMonitor(GStepCallback):
    """Log D's mean logit on training reals and on held-out reals, and the gap between them.

    Every ``every_n_g_steps`` G steps, ``pl_module.discriminator`` scores ``num_samples`` fixed training reals and as
    many held-out reals (``trainer.datamodule.heldout_dataset()``: with ``data.limit``, the training images left out of
    the subset), and as many samples of the module's ``eval_generator`` from fixed seeded noise, in eval mode, clean
    (no augmentation), without gradients. It publishes ``val/d_train``, ``val/d_heldout``, ``val/d_generated``,
    ``val/d_gap = d_train - d_heldout`` and ``val/d_rv = d_gap / (d_train - d_generated)`` with
    ``val/d_gap_g_step``. A D that memorizes its training set scores the images it trained on higher than unseen
    images of the same distribution, so the gap grows (Karras et al. 2020, figure 1); ``val/d_rv`` divides it by how
    far D separates its training reals from the fakes, so it does not grow with D's logit scale (0: no overfitting,
    1: held-out reals scored like fakes; see :func:`overfitting_rv`). ``train/rt`` = E[sign(D(real))] is the
    cheaper heuristic ADA steers by. Every rank computes the same values (same samples, same networks); the training
    run's random streams are not touched. Without held-out reals the monitor logs nothing and says so once.

    Args:
        every_n_g_steps: Evaluate every this many G steps (``0``: only when training ends).
        num_samples: Training reals, held-out reals and generated samples scored per evaluation (the reals and the
            noise drawn once, under ``seed``).
        seed: Seed of the choice of the reals and of the noise.

    Attributes:
        history: ``[(g_step, d_train, d_heldout, d_generated), ...]``.
    """

    stage = EVALUATION

    def __init__(self, every_n_g_steps: int = 200, num_samples: int = 512, seed: int = 0) -> None:
        self.every_n_g_steps = check_int("OverfittingMonitor", "every_n_g_steps", every_n_g_steps, 0)
        self.num_samples = check_int("OverfittingMonitor", "num_samples", num_samples, 1)
        self.seed = check_int("OverfittingMonitor", "seed", seed, 0)
        self.history: list[tuple[int, float, float, Optional[float]]] = []
        self._inputs = FixedInputs(self.num_samples, self.seed)
        self._reals: Optional[tuple[tuple[Tensor, Optional[Tensor]], tuple[Tensor, Optional[Tensor]]]] = None

    @property
    def active(self) -> bool:
        """Whether there are held-out reals to compare with (known after ``setup``)."""
        return self._reals is not None

    def setup(self, trainer: L.Trainer, pl_module: GANModuleLike, stage: str) -> None:
        if stage != "fit" or self._reals is not None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        heldout = datamodule.heldout_dataset() if hasattr(datamodule, "heldout_dataset") else None
        if heldout is None or len(heldout) == 0:  # type: ignore[arg-type]
            log.info("OverfittingMonitor: the data module has no held-out reals (set data.limit to train on a subset); "
                     "val/d_gap is not logged.")
            return
        if not isinstance(getattr(pl_module, "discriminator", None), torch.nn.Module):
            raise ValueError("OverfittingMonitor needs the module's discriminator as pl_module.discriminator "
                             "(an nn.Module); remove the callback (~callbacks.overfitting) otherwise.")
        self._reals = (take_samples(datamodule.train_dataset(), self.num_samples, self.seed),
                       take_samples(heldout, self.num_samples, self.seed))

    def evaluate(self, pl_module: GANModuleLike) -> tuple[float, float, float]:
        """``(d_train, d_heldout, d_generated)``: D's mean logit on the fixed training reals, the held-out reals and
        the generated samples of the fixed noise; does not log."""
        if self._reals is None:
            raise RuntimeError("OverfittingMonitor.evaluate: no held-out reals; call setup with a limited data module.")
        (x_train, y_train), (x_heldout, y_heldout) = self._reals
        z, labels = self._inputs(pl_module)
        # The fakes stay on the module's device: mean_logit scores them there.
        fakes = torch.cat([generate(pl_module, z[i:i + 256], None if labels is None else labels[i:i + 256])
                           for i in range(0, len(z), 256)])
        return (mean_logit(pl_module, x_train, y_train), mean_logit(pl_module, x_heldout, y_heldout),
                mean_logit(pl_module, fakes, labels))

    def on_g_step(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> None:
        if self._reals is not None and is_due(g_step, self.every_n_g_steps):
            self._record(trainer, pl_module, g_step, in_training=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: GANModuleLike) -> None:
        g = g_steps_of(trainer, pl_module)
        if self._reals is not None and (not self.history or self.history[-1][0] != g):
            self._record(trainer, pl_module, g, in_training=False)

    def _record(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int, in_training: bool) -> None:
        d_train, d_heldout, d_generated = self.evaluate(pl_module)
        self.history.append((g_step, d_train, d_heldout, d_generated))
        metrics = {D_TRAIN_KEY: d_train, D_HELDOUT_KEY: d_heldout, D_GENERATED_KEY: d_generated,
                   D_GAP_KEY: d_train - d_heldout, D_GAP_STEP_KEY: float(g_step)}
        rv = overfitting_rv(d_train, d_heldout, d_generated)
        if rv is not None:
            metrics[D_RV_KEY] = rv
        publish_metrics(trainer, pl_module, metrics, in_training)

    def summary_fields(self, trainer: L.Trainer, pl_module: GANModuleLike) -> dict[str, Any]:
        """``overfitting`` for ``summary.json``: rows ``[g_step, d_train, d_heldout, d_gap, d_generated, d_rv]``
        (``d_rv`` null where it is undefined), the final and the largest gap, and the final r_v."""
        if not self.history:
            return {}
        rows = [[g, a, b, a - b, f, None if f is None else overfitting_rv(a, b, f)] for g, a, b, f in self.history]
        return {"overfitting": {"history": rows, "final_gap": rows[-1][3], "max_gap": max(r[3] for r in rows),
                                "final_rv": rows[-1][5]}}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints written before d_generated was recorded hold three columns.
        self.history = [(int(row[0]), float(row[1]), float(row[2]), float(row[3]) if len(row) > 3 else None)
                        for row in state_dict.get("history", [])]


__all__ = ["D_GAP_KEY", "D_GAP_STEP_KEY", "D_GENERATED_KEY", "D_HELDOUT_KEY", "D_RV_KEY", "D_TRAIN_KEY",
           "OverfittingMonitor", "mean_logit", "overfitting_rv", "take_samples"]

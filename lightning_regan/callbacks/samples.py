"""SampleGrid: PNG grids of generated images (or scatter plots of generated 2-D points) during training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from torch import Tensor

from lightning_regan.atomic import atomic_write
from lightning_regan.callbacks.g_step import GStepCallback, g_steps_of, is_due
from lightning_regan.fid.stats import iter_real_batches, reference_dataset_of
from lightning_regan.inputs import FixedInputs, class_inputs, generate
from lightning_regan.protocol import GANModuleLike
from lightning_regan.validation import check_int


class SampleGrid(GStepCallback):
    """Write samples of ``pl_module.generate(z=pl_module.fixed_noise)`` as PNGs every ``every_n_g_steps`` G steps.

    Images become a grid (``torchvision.utils.save_image``); 2-D points a scatter plot of ``num_points``
    generated points (fixed seeded noise) over real points from ``trainer.datamodule.reference_dataset()``
    and the mixture ``centers`` when the DataModule has them. For a class-conditional module (``pl_module.conditional``)
    an image grid has one row per class and ``nrow`` columns (a column keeps the same noise); a scatter plot draws its
    labels with ``pl_module.sample_labels``. Files: ``<dirpath>/step_<g>.png`` and
    ``<dirpath>/last.png`` (the latest), also written when training ends. Only rank zero writes.

    Args:
        dirpath: Output folder.
        every_n_g_steps: Write every this many G steps; ``0`` writes only when training ends.
        nrow: Images per grid row.
        num_points: Generated points per scatter plot (2-D data).
        num_real_points: Real points per scatter plot.
        seed: Seed of the scatter plot's noise.
        min_side: Image grids smaller than this many pixels a side are enlarged to at least it, nearest neighbour by a
            whole factor (the default run's 8x8 digits: 82 px -> 328 px); ``0`` keeps the grid's own size.

    Attributes:
        written: ``[(g_step, path), ...]`` of the ``step_<g>.png`` files written.
    """

    def __init__(
        self,
        dirpath: Union[str, os.PathLike],
        every_n_g_steps: int = 500,
        nrow: int = 8,
        num_points: int = 1000,
        num_real_points: int = 1000,
        seed: int = 0,
        min_side: int = 256,
    ) -> None:
        for name, value, minimum in (("every_n_g_steps", every_n_g_steps, 0), ("nrow", nrow, 1), ("min_side", min_side, 0),
                                     ("num_points", num_points, 1), ("num_real_points", num_real_points, 0)):
            check_int("SampleGrid", name, value, minimum)
        self.dirpath = Path(dirpath)
        self.every_n_g_steps = every_n_g_steps
        self.nrow = nrow
        self.num_points = num_points
        self.num_real_points = num_real_points
        self.seed = seed
        self.min_side = min_side
        self.written: list[tuple[int, Path]] = []
        self._point_inputs = FixedInputs(num_points, seed)
        self._real: Optional[Tensor] = None
        self._real_loaded = False

    @property
    def last_path(self) -> Path:
        """Path of ``last.png``."""
        return self.dirpath / "last.png"

    def on_g_step(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> None:
        if is_due(g_step, self.every_n_g_steps):
            self.write(trainer, pl_module, g_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: GANModuleLike) -> None:
        g = g_steps_of(trainer, pl_module)
        if not self.written or self.written[-1][0] != g:
            self.write(trainer, pl_module, g)

    def write(self, trainer: L.Trainer, pl_module: GANModuleLike, g_step: int) -> Optional[Path]:
        """Write ``step_<g_step>.png`` and ``last.png`` (rank zero only); returns the step file's path."""
        if not trainer.is_global_zero:
            return None
        from lightning_regan.plots import save_image_grid

        if getattr(pl_module, "conditional", False):  # one row of nrow samples per class
            samples = generate(pl_module, *class_inputs(pl_module, self.nrow, pl_module.fixed_noise_seed))
        else:
            samples = generate(pl_module, pl_module.fixed_noise)
        target = self.dirpath / f"step_{g_step}.png"
        if samples.dim() == 2:
            self._write_points(trainer, pl_module, target, g_step)
        else:
            save_image_grid(samples, target, nrow=self.nrow, min_side=self.min_side)
        atomic_write(self.last_path, lambda p: Path(p).write_bytes(target.read_bytes()))
        self.written.append((g_step, target))
        return target

    def _write_points(self, trainer: L.Trainer, pl_module: GANModuleLike, target: Path, g_step: int) -> None:
        from lightning_regan.plots import save_scatter

        points = generate(pl_module, *self._point_inputs(pl_module))
        datamodule = getattr(trainer, "datamodule", None)
        if not self._real_loaded and self.num_real_points > 0:
            reference = reference_dataset_of(datamodule)
            if reference is not None:  # the first num_real_points samples, one batch
                self._real = next(iter_real_batches(reference, self.num_real_points, self.num_real_points), None)
            self._real_loaded = True
        save_scatter(points, target, real=self._real, centers=getattr(datamodule, "centers", None), title=f"G step {g_step}")

    def state_dict(self) -> dict[str, Any]:
        return {"written": [(g, str(p)) for g, p in self.written]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.written = [(int(g), Path(p)) for g, p in state_dict.get("written", [])]


__all__ = ["SampleGrid"]

"""A user callback that raises in the middle of training, for tests of failed runs (added with Hydra overrides,
e.g. ``+callbacks.boom._target_=boom.RaiseAtGStep +callbacks.boom.g_step=3``, with ``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L


class RaiseAtGStep(L.Callback):
    """Raise ``RuntimeError`` once the module has made ``g_step`` G steps; only in the run whose ``seed`` equals
    ``fail_seed`` when that is given (so one trial of a ``seed=...`` sweep fails)."""

    def __init__(self, g_step: int = 3, seed: Optional[int] = None, fail_seed: Optional[int] = None) -> None:
        self.g_step = g_step
        self.armed = fail_seed is None or seed == fail_seed

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.armed and getattr(pl_module, "g_steps", 0) >= self.g_step:
            raise RuntimeError(f"boom at G step {pl_module.g_steps}")

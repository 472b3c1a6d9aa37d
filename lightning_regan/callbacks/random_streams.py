"""RandomStreams: one random stream per DDP rank, saved in checkpoints and put back on resume (added to every
Trainer by ``GANModule.configure_callbacks``, so no GANModule hook has to be remembered by a subclass)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_regan.distributed import gather_rng_states, set_rng_states

#: Section of the checkpoint that holds the random states (GANModule's section).
CHECKPOINT_KEY = "regan"


class RandomStreams(Callback):
    """Per-rank seeding and bit-exact resumption of the global random streams that draw the GAN's noise.

    * With the same seed on every rank (``seed_everything``) all ranks would draw the same noise, so a DDP step would
      see ``world_size`` copies of one fake batch: each rank continues from seed ``initial_seed + rank`` (as
      StyleGAN2-ADA and StudioGAN do); a single-device run is left alone.
    * Checkpoints hold every rank's CPU (and CUDA) random state; a resumed run with the same number of processes puts
      them back. After a mid-epoch resume Lightning starts a new data iterator, which draws from the stream (the
      sampler's seed) where the uninterrupted run did not: the states are put back once more at the first batch.
    """

    def __init__(self) -> None:
        self._loaded: Optional[Mapping[str, Tensor]] = None
        self._rewind: Optional[Mapping[str, Tensor]] = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._loaded = (checkpoint.get(CHECKPOINT_KEY) or {}).get("rng")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called on every rank (Trainer.save_checkpoint), so gathering the ranks' states is safe here.
        checkpoint.setdefault(CHECKPOINT_KEY, {})["rng"] = gather_rng_states(pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._loaded = self._loaded, None
        rank, world = trainer.global_rank, trainer.world_size
        if states is not None and trainer.ckpt_path is not None:
            if int(states["cpu"].shape[0]) == world:
                set_rng_states(states, rank, pl_module.device)
                self._rewind = {k: v[rank : rank + 1] for k, v in states.items()}
                return
            rank_zero_warn(
                f"The checkpoint holds random states of {int(states['cpu'].shape[0])} processes, this run has {world}: "
                "the random streams restart (the run is resumed, but not bit for bit)."
            )
        if world > 1:
            torch.manual_seed((torch.initial_seed() + rank) % 2**63)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only a mid-epoch resume needs the rewind (at an epoch end both runs start the next epoch's iterator from
        # the restored stream). GANModule takes one D step per batch, so d_steps counts the batches done.
        batches = trainer.num_training_batches
        done = int(getattr(pl_module, "d_steps", 0))
        if not (math.isfinite(batches) and batches > 0 and done % int(batches)):
            self._rewind = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rewind is not None:
            set_rng_states(self._rewind, 0, pl_module.device)
            self._rewind = None


__all__ = ["RandomStreams"]

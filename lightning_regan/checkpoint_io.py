"""Checkpoints that are never half-written: a Lightning ``CheckpointIO`` writing through a temporary file in the
checkpoint's own folder and ``os.replace``.

Lightning's ``TorchCheckpointIO`` writes through a temporary file that fsspec may put on another filesystem (``/tmp``)
and then moves, which across filesystems is a plain copy: a full disk leaves a truncated ``best.ckpt`` under its final
name. Here the rename stays on one filesystem, so a checkpoint file is either the old complete one or the new complete
one. ``regan-train`` installs it; in Python pass it as a plugin::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], ...)
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_regan.atomic import write_bytes_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is atomic on local paths.

    The checkpoint is serialized in memory, written to a temporary file in the target folder, fsynced and renamed
    over the target. On a full disk it raises :class:`~lightning_regan.atomic.DiskFullError` (an ``OSError``) and
    leaves the target as it was. Remote paths (``s3://...``) are left to ``TorchCheckpointIO``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):  # fsspec URLs: Lightning's own transaction
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}.")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(os.fspath(path), buffer.getvalue())


__all__ = ["AtomicCheckpointIO"]

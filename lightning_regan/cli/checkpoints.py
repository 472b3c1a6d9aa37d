"""Reading ``regan-train`` checkpoints safely: tensors and plain containers only, every weight finite.

Used by ``regan-train ckpt_path=...`` (before the Trainer starts), ``regan-eval`` and ``regan-sample``. Errors are
one line that says what is wrong with which file; none suggests loading with ``weights_only=False``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_regan.module import CHECKPOINT_KEY


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, damaged, or does not fit lightning-regan."""


def _why_refused(exc: BaseException) -> str:
    """The reason in torch's error without its advice (which includes trying ``weights_only=False``)."""
    text = str(exc)
    if "Weights only load failed" in text:
        # Keep the paragraph that says what was refused; drop the advice paragraphs.
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        named = [p for p in paragraphs if "weights_only" not in p and "torch.load" not in p]
        reason = re.sub(r"^WeightsUnpickler error:\s*", "", named[0]).splitlines()[0].rstrip(".") if named else ""
        if "global" in reason.lower():
            return f"it holds objects other than tensors and plain containers ({reason}), which are never loaded"
        return f"not a checkpoint ({reason or 'unreadable pickle'})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"not a checkpoint ({type(exc).__name__}{': ' + first[:200] if first else ''})"


def read_checkpoint(path: str | os.PathLike, key: str = "checkpoint", map_location: Any = "cpu") -> dict[str, Any]:
    """Load a lightning-regan checkpoint with ``weights_only=True`` and check it.

    Args:
        path: The ``.ckpt`` file.
        key: How the user named it (``ckpt_path``, ``checkpoint``), for messages.
        map_location: Passed to ``torch.load``.

    Raises:
        CheckpointError: missing, unreadable or unsafe file; no lightning-regan section; a non-finite weight.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r} does not exist; pass an existing .ckpt file.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors of any kind on a foreign file; unsafe objects refused by torch
        raise CheckpointError(
            f"{key}={str(path)!r} is refused: {_why_refused(exc)}; pass a checkpoint written by regan-train."
        ) from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(CHECKPOINT_KEY), Mapping) \
            or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(
            f"{key}={str(path)!r} is not a regan-train checkpoint (no 'state_dict' and '{CHECKPOINT_KEY}' sections). "
            "For a checkpoint of your own GANModule use GANModule.load_from_checkpoint(path, generator=..., "
            "discriminator=...)."
        )
    check_finite(checkpoint["state_dict"], f"{key}={str(path)!r}")
    return dict(checkpoint)


def check_finite(state_dict: Mapping[str, Any], where: str) -> None:
    """Raise :class:`CheckpointError` naming the first floating-point tensor with a NaN or infinite value."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise CheckpointError(
                    f"{where}: weight {name} holds {int(bad.sum())} non-finite values (NaN/inf) of {value.numel()}; "
                    "the file is damaged or the run diverged before it was saved. Use another checkpoint (e.g. "
                    "checkpoints/best.ckpt)."
                )


__all__ = ["CheckpointError", "check_finite", "read_checkpoint"]

"""Reading ``regan-train`` checkpoints safely: tensors and plain containers only, every weight finite.

Used by ``regan-train ckpt_path=...`` (before the Trainer starts), ``regan-eval`` and ``regan-sample``. Errors are
one line that says what is wrong with which file; none suggests loading with ``weights_only=False``.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from lightning_regan.cli.checks import (
    LAST, LAST_REQUIRED, ConfigError, config_differences, last_checkpoint, missing_last_message,
    resume_mismatch_message,
)
from lightning_regan.module import CHECKPOINT_KEY

#: The first bytes of torch.save's legacy (non-zip) format: a protocol-2 pickle of torch's magic number.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


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
    first = _first_sentence(text)
    return f"not a checkpoint ({type(exc).__name__}{': ' + first[:300] if first else ''})"


class DamagedCheckpoint(Exception):
    """A file that began as a torch checkpoint but is cut short or corrupted (``str``: why, one clause)."""


def _first_sentence(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.split(". ")[0].rstrip(".")


def other_checkpoint(path: Path) -> str:
    """What to use instead of a damaged ``path``: the newest other ``.ckpt`` beside it, ``best.ckpt`` first."""
    others = [p for p in path.parent.glob("*.ckpt")
              if p.is_file() and p.resolve() != path.resolve() and zipfile.is_zipfile(p)]
    best = [p for p in others if p.name == "best.ckpt"]
    if best or others:
        choice = (best or sorted(others, key=lambda p: p.stat().st_mtime_ns))[-1]
        return f"use {choice} or an earlier checkpoint"
    return "use checkpoints/best.ckpt or an earlier checkpoint"


def _not_torch(path: Path) -> Optional[str]:
    """Why ``path`` is not a torch checkpoint, judged from its first bytes without unpickling anything (``None``:
    a zip archive as ``torch.save`` writes, or torch's legacy format, both left to ``torch.load``).

    Raises:
        DamagedCheckpoint: it begins like a checkpoint (a zip archive) but is cut short, or is zeroed.
    """
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(4096)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        raise DamagedCheckpoint(f"a zip archive cut short ({size:,} bytes): its writing was interrupted (a full disk, "
                                "a kill)")
    if head and not head.strip(b"\0"):
        raise DamagedCheckpoint(f"it begins with {len(head):,} zero bytes where a checkpoint begins with 'PK' (zeroed "
                                "by a crash of the machine or the filesystem)")
    head = head[: len(_LEGACY_TORCH_HEAD)]
    if head == _LEGACY_TORCH_HEAD:
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a raw pickle, not a torch checkpoint; it was not unpickled (unsafe: a pickle can run code)"
    return "not a checkpoint (not a torch zip archive)"


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
        why = _not_torch(path)
    except DamagedCheckpoint as exc:
        raise CheckpointError(f"{key}={str(path)!r} is damaged: {exc}; {other_checkpoint(path)}.") from None
    if why is not None:
        raise CheckpointError(f"{key}={str(path)!r} is refused: {why}; pass a checkpoint written by regan-train.")
    try:
        with warnings.catch_warnings():  # torch's own warnings about the file would come before our one line
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors of any kind on a foreign file; unsafe objects refused by torch
        if "PytorchStreamReader" in str(exc):  # a zip archive whose contents are corrupted
            raise CheckpointError(
                f"{key}={str(path)!r} is damaged: the archive is corrupted ({_first_sentence(str(exc))}); "
                f"{other_checkpoint(path)}."
            ) from None
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


def resolve_resume(cfg: DictConfig, output_dir: Optional[str | os.PathLike], announce: bool = True) -> Optional[str]:
    """The checkpoint ``cfg.ckpt_path`` resumes from, checked: safe, regan-train's, finite, and written with the
    same :data:`~lightning_regan.cli.checks.RESUME_NODES` settings as ``cfg``.

    Args:
        cfg: The composed run config.
        output_dir: The run's output folder (for ``ckpt_path=last``); ``None``: unknown yet, ``last`` is not checked.
        announce: Print the one line saying that ``ckpt_path=last`` found nothing and the run starts fresh.

    Returns:
        The checkpoint path, or ``None`` for a fresh run.

    Raises:
        CheckpointError: missing, unsafe, damaged or foreign file; ConfigError: other settings than the checkpoint's,
            or ``ckpt_path=last_required`` with no checkpoint.
    """
    value = cfg.get("ckpt_path")
    if value in (None, ""):
        return None
    value = str(value)
    if value in (LAST, LAST_REQUIRED):
        if output_dir is None:
            return None
        path = last_checkpoint(output_dir)
        if not path.is_file():
            if value == LAST_REQUIRED:
                raise ConfigError(missing_last_message(path, required=True))
            if announce:
                print(missing_last_message(path, required=False), file=sys.stderr, flush=True)
            return None
    else:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path={value!r} does not exist; pass an existing .ckpt file or ckpt_path={LAST}."
            )
    check_same_settings(path, cfg, "ckpt_path")
    return str(path)


def check_same_settings(path: Path, cfg: DictConfig, key: str) -> None:
    """Read the checkpoint safely and raise :class:`ConfigError` when it was trained with other settings."""
    checkpoint = read_checkpoint(path, key)  # refuses unsafe, foreign or damaged files in one line
    stored = checkpoint[CHECKPOINT_KEY].get("config")
    if isinstance(stored, Mapping):
        differences = config_differences(dict(stored), cfg)
        if differences:
            raise ConfigError(resume_mismatch_message(key, path, differences))


def slurm_hpc_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint Lightning resumes a requeued SLURM job from by itself (the newest
    ``<output_dir>/hpc_ckpt_<n>.ckpt``, when on SLURM and ``ckpt_path`` is not set), or ``None``."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("hpc_ckpt_*.ckpt")
             if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return max(found)[1] if found else None


__all__ = ["CheckpointError", "check_finite", "check_same_settings", "read_checkpoint", "resolve_resume",
           "slurm_hpc_checkpoint"]

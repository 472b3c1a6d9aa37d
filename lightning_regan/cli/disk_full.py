"""``regan-train``'s one line for a run stopped by a full disk (exit code 1): the folder, the last good checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

from lightning_regan.atomic import DiskFullError

#: Exit code of a run stopped by a full disk: a failure (not a bad input), but every file left is complete.
EXIT_DISK_FULL = 1


def last_good_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """The newest checkpoint under ``<output_dir>/checkpoints`` (every one there is complete: they are written
    atomically), ``last.ckpt`` first at the same time; ``None`` when there is none."""
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.glob("*.ckpt") if p.is_file() and not p.name.startswith(".")]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def disk_full_message(output_dir: str | os.PathLike, exc: BaseException) -> str:
    """One line naming the full disk's folder, what was not written, and where to resume from."""
    target: Optional[Path] = None
    err: Optional[BaseException] = exc
    while err is not None:
        if isinstance(err, DiskFullError):
            target = err.target
            break
        if isinstance(err, OSError) and err.filename:
            target = Path(str(err.filename))
            break
        err = err.__cause__ or err.__context__
    folder = target.parent if target is not None else Path(output_dir)
    what = f"{target.name} was not written" if target is not None else "a file could not be written"
    last = last_good_checkpoint(output_dir)
    if last is None:
        resume = "no checkpoint was written yet: free space and start again"
    else:
        how = "ckpt_path=last" if last.name == "last.ckpt" else f"ckpt_path={last}"
        resume = f"the last good checkpoint is {last}: free space, then resume with {how}"
    return (f"regan-train: error: the disk holding {folder} is full (No space left on device; {what}); every file "
            f"left in {output_dir} is complete; {resume} (exit code {EXIT_DISK_FULL}).")


def stop_on_full_disk(output_dir: str | os.PathLike, exc: BaseException) -> NoReturn:
    """Print :func:`disk_full_message` on stderr and exit with :data:`EXIT_DISK_FULL`."""
    print(disk_full_message(output_dir, exc), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_DISK_FULL)


__all__ = ["EXIT_DISK_FULL", "disk_full_message", "last_good_checkpoint", "stop_on_full_disk"]

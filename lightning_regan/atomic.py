"""Files that are never half-written: write to a temporary file in the target's folder, then ``os.replace``."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

from torch import Tensor

PathLike = Union[str, os.PathLike]

#: ``errno`` values that mean "the disk (or the user's quota on it) is full".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full; nothing was left under its final name.

    Attributes:
        target: The file that was being written.
    """

    def __init__(self, target: PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(target))
        self.target = Path(target)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(target: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``target``; on any error nothing is left behind.

    Args:
        target: Final path; its folder is created.
        write: Writes the whole file at the temporary path it is given.

    Raises:
        DiskFullError: the disk holding ``target`` is full (``target`` is left as it was: complete or absent).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS and not isinstance(exc, DiskFullError):
            raise DiskFullError(target, exc) from exc
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, fsynced before the rename (:func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def json_safe(value: Any) -> Any:
    """Plain JSON values: tensors become floats, non-finite floats null, paths strings, str enums their value."""
    if isinstance(value, Tensor):
        value = value.detach().float().mean().item() if value.numel() else None
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(getattr(value, "value", None), str):  # str enums such as StopReason
        return value.value
    return str(value)


def write_json_atomic(path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` (through :func:`json_safe`: strict JSON) to ``path`` atomically, fsynced before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)

"""Files that are never half-written: write to a temporary file in the target's folder, then ``os.replace``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

from torch import Tensor

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(target: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``target``; on any error nothing is left behind.

    Args:
        target: Final path; its folder is created.
        write: Writes the whole file at the temporary path it is given.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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

"""One process at a time per run folder: ``<output_dir>/.regan.lock`` holds the owner's PID and host.

The lock file is created complete (written under a temporary name, then hard-linked to its final name, which fails
when it exists, as ``O_EXCL`` does; ``O_CREAT | O_EXCL`` itself where the filesystem has no hard links), so a reader
never sees a half-written lock. A lock left by a process that is gone (same host, PID
not running, or running but started at another time: a reused PID) is stale and taken over. Torch-free.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

from lightning_regan.errors import ConfigError

LOCK_NAME = ".regan.lock"

PathLike = Union[str, os.PathLike]


class RunFolderBusy(ConfigError):
    """The run folder is owned by another live process."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or ``None`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def is_rank_zero_process() -> bool:
    """Whether this process is the first of a distributed job (DDP's other ranks share rank zero's folder)."""
    return all(os.environ.get(key, "0") in ("0", "") for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def read_lock(path: PathLike) -> Optional[dict[str, Any]]:
    """The owner recorded in a lock file (``pid``, ``host``, ``started``, ...), or ``None`` when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def describe_owner(owner: dict[str, Any]) -> str:
    """``PID 123 on host h since 2026-12-07 04:50:01``."""
    started = owner.get("started")
    since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if isinstance(started, (int, float)) else ""
    return f"PID {owner.get('pid')} on host {owner.get('host')}{since}"


def _create_exclusive(complete: str, path: Path) -> None:
    """Create ``path`` with the contents of the file ``complete``, failing with ``FileExistsError`` when it exists.

    A hard link makes it appear complete at once; where the filesystem has no hard links, ``O_CREAT | O_EXCL``.
    """
    try:
        os.link(complete, path)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(Path(complete).read_text())


class RunLock:
    """Exclusive ownership of a run folder by this process (re-entrant within it).

    Args:
        output_dir: The run folder; the lock is ``<output_dir>/.regan.lock``.
        key: How the user names the folder (``hydra.run.dir``, ``output_dir``), for messages.
    """

    def __init__(self, output_dir: PathLike, key: str = "output_dir") -> None:
        self.output_dir = Path(output_dir)
        self.key = key
        self.path = self.output_dir / LOCK_NAME
        self._depth = 0
        #: The one line said when a stale lock was taken over (also printed on stderr), else ``None``.
        self.took_over: Optional[str] = None

    def _owner(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "proc_start": _start_time(os.getpid()), "argv": sys.argv[:8]}

    def _is_stale(self, owner: Optional[dict[str, Any]]) -> bool:
        if owner is None:
            return True  # unreadable: never written by us (ours are created complete)
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another machine runs
        pid = int(owner["pid"])
        if not _alive(pid):
            return True
        recorded, now = owner.get("proc_start"), _start_time(pid)
        return recorded is not None and now is not None and recorded != now  # the PID was reused

    def _mine(self, owner: Optional[dict[str, Any]]) -> bool:
        return (owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
                and owner.get("proc_start") == _start_time(os.getpid()))

    def acquire(self) -> "RunLock":
        """Take the folder (create it when needed).

        Raises:
            RunFolderBusy: another live process owns it.
        """
        if self._depth:
            self._depth += 1
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.output_dir, prefix=f"{LOCK_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._owner(), f)
            for _ in range(3):
                try:
                    _create_exclusive(tmp, self.path)
                    break
                except FileExistsError:
                    owner = read_lock(self.path)
                    if self._mine(owner):
                        break
                    if not self._is_stale(owner):
                        raise RunFolderBusy(
                            f"{self.key}={self.output_dir} is in use by another run ({describe_owner(owner or {})}); "
                            f"wait for it to end or pick another {self.key} (if that process is gone, delete "
                            f"{self.path})."
                        ) from None
                    self.took_over = (
                        f"regan-train: {self.key}={self.output_dir} was locked by a run that is gone "
                        f"({describe_owner(owner) if owner else 'unreadable lock'}); taking it over."
                    )
                    print(self.took_over, file=sys.stderr, flush=True)
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
            else:
                raise RunFolderBusy(f"{self.key}={self.output_dir}: could not take {self.path}; another run keeps it.")
        finally:
            os.unlink(tmp)
        self._depth = 1
        return self

    def release(self) -> None:
        """Give the folder back (the lock file is removed when this process owns it)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._mine(read_lock(self.path)):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}


def lock_run_folder(output_dir: PathLike, key: str = "output_dir") -> Optional[RunLock]:
    """Take ``output_dir`` for this process (again, when it already holds it); ``None`` on DDP's other ranks, which
    work in rank zero's folder. Release with :func:`unlock_run_folder`.

    Raises:
        RunFolderBusy: another live process owns the folder.
    """
    if not is_rank_zero_process():
        return None
    folder = Path(output_dir).resolve()
    lock = _HELD.get(folder) or RunLock(folder, key)
    lock.acquire()
    _HELD[folder] = lock
    return lock


def unlock_run_folder(output_dir: PathLike) -> None:
    """Undo one :func:`lock_run_folder` of this process."""
    folder = Path(output_dir).resolve()
    lock = _HELD.get(folder)
    if lock is not None:
        lock.release()
        if lock._depth == 0:
            del _HELD[folder]


__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock", "describe_owner", "is_rank_zero_process", "lock_run_folder",
           "read_lock", "unlock_run_folder"]

"""One study at a time per folder: `OUT/.cifake.lock`, holding the owner's process id and host.

Two `cifake run` on one folder (two Colab tabs, a cell run twice) would both do all the work
and race on every file. `study_lock(out)` creates the lock file exclusively (O_EXCL: one of two
racing processes wins); the other gets `FolderLocked` naming the holder. A lock left by a
process that is gone (same host, dead pid: a kill -9, a crashed kernel) is taken over with a
warning. A lock from another host cannot be checked, so it is refused; its message says which
file to delete once that run is known to be over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cifake_lib.core.errors import CifakeError

LOCK_FILE = ".cifake.lock"
logger = logging.getLogger("cifake_lib")


class FolderLocked(CifakeError):
    """Another live process holds the folder's lock."""


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (signal 0 checks without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when it is absent or unreadable (a torn write)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _holder(command: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _create(path: Path, holder: dict[str, Any]) -> bool:
    """Write the lock file if none exists; False when another process made one first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder, f)
    return True


def acquire(out: str | os.PathLike, command: str = "cifake") -> Path:
    """Take OUT's lock (taking over a stale one, with a warning); raise FolderLocked when held."""
    path = Path(out) / LOCK_FILE
    me = _holder(command)
    for _ in range(3):  # a stale lock removed between our look and our create: try again
        if _create(path, me):
            return path
        holder = read_lock(path)
        if holder is None:  # empty or torn: its writer died mid-write, or is writing now
            time.sleep(0.2)
            holder = read_lock(path)
        if holder is not None and holder["pid"] == me["pid"] and holder.get("host") == me["host"]:
            return path  # this process already holds it (a notebook calling twice)
        if holder is not None and (holder.get("host") != me["host"] or pid_alive(holder["pid"])):
            where = "" if holder.get("host") == me["host"] else f" on host {holder.get('host')}"
            raise FolderLocked(f"{out}: in use by process {holder['pid']}{where} ({holder.get('command', '?')}, "
                               f"since {holder.get('since', '?')}); wait for it to finish, or delete {path} if "
                               "that process is gone")
        what = "unreadable" if holder is None else f"left by process {holder['pid']}, which is gone"
        logger.warning("%s: taking over a stale lock (%s)", path, what)
        path.unlink(missing_ok=True)
    raise FolderLocked(f"{out}: could not take the lock {path}; another process keeps taking it")


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    holder = read_lock(path)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


_held: dict[str, int] = {}  # lock path -> nesting depth in this process


@contextmanager
def study_lock(out: str | os.PathLike, command: str = "cifake") -> Iterator[Path]:
    """Hold OUT's lock for the block (see `acquire`); the folder must exist. Nested use by one
    process (a stage inside `cifake run`) keeps the lock until the outermost block ends. In a
    multi-process launch (accelerate, torchrun: $RANK set) only rank 0 takes it, for the group."""
    if os.environ.get("RANK", "0") != "0":
        yield Path(out) / LOCK_FILE
        return
    path = acquire(out, command)
    key = str(path.resolve())
    _held[key] = _held.get(key, 0) + 1
    try:
        yield path
    finally:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]
            release(path)


__all__ = ["LOCK_FILE", "FolderLocked", "acquire", "pid_alive", "read_lock", "release", "study_lock"]

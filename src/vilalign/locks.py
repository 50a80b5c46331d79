"""Folders in use: one process at a time, a clear word to the second, and no stale locks.

A run folder, a grid folder or an analysis folder is held by the process writing into it
through :func:`folder_lock`: an exclusive ``flock`` on the file ``.vilalign.lock`` inside
it, into which the holder writes its pid, host, start time and command. A second process
gets :class:`FolderInUseError`, one line naming that holder. The kernel drops an ``flock``
when its process ends, however it ends (SIGKILL included), so a killed holder never
blocks anyone: the next process takes the lock over and logs whose it was.

Why ``flock`` and not a pid file: a pid file outlives a killed process, and whether a pid
is still alive cannot be told from another host of a shared file system, nor after the
pid has been reused. (On a file system without ``flock`` support the lock is not taken
and a warning says so; nothing is refused.)

The lock file is never deleted, only emptied on release: deleting it would let a process
that opened the old file and one that creates a new one both hold "the" lock.

Locks are re-entrant within a process (a grid holds its folder while each of its runs
takes its own; the command line takes a run's lock before creating its MLflow run and the
library takes it again). :func:`brief_lock` waits instead of refusing: for short critical
sections, such as creating a SQLite store that several workers open at the same moment.
:func:`is_held` tells whether some process holds a folder (a tuning worker uses it to
find trials whose worker was killed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".vilalign.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderInUseError(OSError):
    """Another process holds the folder; the message names it (pid, host, command)."""


class _Held:
    """This process's hold on one lock file: its descriptor and how often it is taken."""

    def __init__(self, fd: int | None) -> None:
        self.fd, self.count = fd, 1


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def holder_info() -> dict[str, Any]:
    """What a lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }


def read_holder(path: str | Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file (None: empty, unreadable or missing)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        data = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:  # a holder killed while writing it
        return None
    return data if isinstance(data, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (it is starting; its details are not written yet)"
    command = f": {holder['command']}" if holder.get("command") else ""
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} "
        f"(since {holder.get('since')}{command})"
    )


def _open(path: Path, what: str) -> int:
    """The lock file, created with its folder: the first write into the folder, so a
    read-only or full place is reported here, before any work, naming the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise type(err)(
            err.errno, f"cannot write into the {what} folder {path.parent} ({err.strerror})"
        ) from None


def _try_flock(fd: int, path: Path, blocking: bool) -> bool:
    """True when taken; False when another process holds it (non-blocking only)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            log.warning("%s: this file system cannot lock files; not locked (%s)", path, err)
            return True
        raise


def _record(fd: int, path: Path) -> None:
    """Write this process into the lock file, after saying whose lock it took over."""
    previous = read_holder(path)
    if previous is not None and previous.get("pid") != os.getpid():
        log.info("%s: took over the lock of %s, which has ended", path.parent, describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_info()).encode(), 0)


def _acquire(path: Path, what: str, wait: float | None) -> None:
    key = str(path.resolve())
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
            return
    fd = _open(path, what)
    deadline = None if wait is None else time.monotonic() + wait
    while not _try_flock(fd, path, blocking=False):
        if deadline is None or time.monotonic() >= deadline:
            holder = read_holder(path)
            os.close(fd)
            raise FolderInUseError(
                f"{path.parent} is in use by {describe(holder)}; {what} folders take one "
                "process at a time: wait for that one to finish or use another folder"
            )
        time.sleep(0.05)
    _record(fd, path)
    with _GUARD:
        _HELD[key] = _Held(fd)


def _release(path: Path) -> None:
    key = str(path.resolve())
    with _GUARD:
        held = _HELD[key]
        held.count -= 1
        if held.count:
            return
        del _HELD[key]
    if held.fd is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)  # released cleanly: no holder to report
        os.close(held.fd)  # (closing drops the flock)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the block; refuse if another process does.

    ``what`` names the kind of folder in the error (run, experiment, analysis, ...).
    Creating the folder and its lock file is also the first check that it is writable:
    a read-only place fails here, before any work, naming the path.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    _acquire(path, what, wait=None)
    try:
        yield folder
    finally:
        _release(path)


@contextlib.contextmanager
def brief_lock(path: str | Path, wait: float = 120.0, what: str = "store") -> Iterator[Path]:
    """Hold the lock file ``path`` for a short critical section, waiting up to ``wait``
    seconds for another process to leave it (then :class:`FolderInUseError`); ``what``
    names the folder in an error."""
    path = Path(path)
    _acquire(path, what, wait=wait)
    try:
        yield path
    finally:
        _release(path)


def is_held(folder: str | Path) -> bool | None:
    """Whether some process holds ``folder``'s lock: True, False (free: its holder, if
    any, has ended), or None when the folder has never been locked."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    if str(path.resolve()) in _HELD:
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:  # (closing below releases the probe's own flock at once)
        return not _try_flock(fd, path, blocking=False)
    finally:
        os.close(fd)

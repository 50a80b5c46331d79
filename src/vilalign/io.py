"""Files written whole or not at all, with ordinary permissions, under safe names.

Every file the toolkit writes that a later run or a reader relies on (configs, weights,
checkpoints, results, tables) goes through here:

* :func:`write_atomic` — a writer callback (pandas, safetensors, matplotlib, ...) writes
  a temporary file beside the target; it is flushed to disk and renamed over the target
  with ``os.replace``. A process killed at any point leaves the old file or none, never a
  truncated one. :func:`write_text_atomic`, :func:`write_bytes_atomic` and
  :func:`write_json_atomic` are the common cases.
* :func:`atomic_dir` — the same for a folder (a checkpoint, an image cache).
* :func:`safe_name` — a string (a measure, a sample id, a grid cell) as a file name.

Why not ``tempfile.mkstemp``/``mkdtemp``: they create files 0600 and folders 0700 whatever
the user's umask, and the rename keeps that mode, so configs, weights and results (and
the MLflow artifacts copied from them) became readable by their owner only. Here the
temporary file or folder is created like any other (``0o666``/``0o777`` minus the umask),
under a random name so concurrent writers never share one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

TEMP_PREFIX = ".tmp-"  # leftovers of interrupted writes start with this (see prune())
OLD_PREFIX = ".old-"


def temp_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` that ends like it (writers that pick a format
    by the suffix still see it)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable; not every platform can open a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: nothing more to do
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _create(path: Path) -> int:
    """Create an empty ``path`` as ``open()`` would (``0o666`` minus the umask); its mode.

    O_EXCL: never write into a file someone else created under the same name.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return stat.S_IMODE(os.stat(path).st_mode)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, fsync it, rename it over ``path``.

    ``write`` writes the (already created, empty) file ``tmp``: ``frame.to_parquet``,
    ``save_model(m, tmp)``, ``fig.savefig``, ... The result gets the permissions of any
    new file, also from writers that would not give them (safetensors writes 0600). On any
    error the temporary file is removed and the previous ``path`` (if any) is untouched.
    Returns ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        wanted = _create(tmp)
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != wanted:
            os.chmod(tmp, wanted)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except Exception as err:
        failure = write_failure(err, path)  # (measured before the partial file is removed)
        tmp.unlink(missing_ok=True)
        if failure is None:
            raise
        raise failure from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


#: Below this many free bytes a failed write is reported as a full disk.
NEARLY_FULL = 16 * 2**20
#: What writers that are not Python file objects say when the system refuses a write:
#: torch.save ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
#: its stream writer, safetensors.
_WRITER_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed", "IoError")


def free_bytes(folder: str | Path) -> int | None:
    try:
        info = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def write_failure(err: BaseException, path: str | Path) -> OSError | None:
    """A one-line ``OSError`` naming ``path`` for a write the system refused (a full disk,
    a read-only or vanished folder), whatever the writer raised; None for other errors.

    Writers report a full disk in their own words (torch: "unexpected pos"), or as an
    ``OSError`` without the file name; the user needs the path and the reason.
    """
    path = Path(path)
    free = free_bytes(path.parent)
    if free is not None and free < NEARLY_FULL:
        return OSError(errno.ENOSPC, f"no space left on the device ({free} bytes free)", str(path))
    if isinstance(err, OSError):
        if err.filename is None and err.errno is not None:
            return OSError(err.errno, err.strerror or str(err), str(path))
        return None
    if any(s in str(err) for s in _WRITER_FAILURES):
        return OSError(errno.EIO, f"the write failed ({str(err).strip()[:200]})", str(path))
    return None


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """``data`` as JSON in ``path``, atomically (see :func:`write_atomic`)."""
    return write_text_atomic(path, json.dumps(data, indent=indent))


def _make_temp_dir(path: Path) -> Path:
    for _ in range(100):
        tmp = temp_path(path)
        try:
            tmp.mkdir()  # 0o777 minus the umask, unlike mkdtemp's 0o700
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, if_exists: Literal["replace", "keep"] = "replace"
) -> Iterator[Path]:
    """Fill a fresh temporary folder beside ``path``; it becomes ``path`` on success.

    ``if_exists="replace"``: an existing ``path`` is swapped out (renamed aside, the new
    folder renamed in, the old one deleted), so a reader sees the old or the new folder,
    never a mix. ``"keep"``: an existing ``path`` wins and the new folder is discarded
    (another process finished the same work first). On an error inside the block the
    temporary folder is removed and ``path`` is untouched. Write files that need the
    usual permissions from a writer that does not give them with :func:`write_atomic`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_dir(path)
    try:
        yield tmp
        _replace_dir(tmp, path, if_exists)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _replace_dir(src: Path, dst: Path, if_exists: Literal["replace", "keep"]) -> None:
    if dst.exists():
        if if_exists == "keep":
            return
        old = dst.with_name(f"{OLD_PREFIX}{dst.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(src, dst)
        except OSError:  # a concurrent writer renamed its folder in first
            if if_exists != "keep" or not dst.exists():
                raise
    fsync_dir(dst.parent)


def safe_name(text: str, keep: str = "._-", fallback: str = "unnamed") -> str:
    """``text`` as a file name: every run of characters other than ASCII letters, digits
    and ``keep`` becomes one ``_``; leading/trailing ``_`` are dropped; an empty result
    is ``fallback``. ``"maxsim text→patch/v2"`` → ``"maxsim_text_patch_v2"``."""
    pattern = f"[^A-Za-z0-9{re.escape(keep)}]+"
    return re.sub(pattern, "_", text).strip("_") or fallback

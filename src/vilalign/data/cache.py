"""Preprocessed-image cache: decode and resize once, then read at memory speed.

Layout of one cache (a folder ``<name>-<fingerprint>``):

* ``images.u8`` — a raw uint8 array N×3×H×W (opened with ``numpy.memmap``), one row per
  good image, already resized and centre-cropped by :meth:`ImageTransform.prepare`;
* ``index.json`` — the image keys (file paths) in row order, the array shape, the
  settings it was built with, and the bad images that were skipped.

The fingerprint hashes every source file's path, size and modification time plus the
preprocessing settings, so changing a file or the image size selects (and builds) a new
cache, while an unchanged dataset reuses the old one across runs. A cache is built in a
temporary folder and renamed into place, so a crash never leaves a half-written cache
that looks complete, and concurrent builders (DDP ranks) do not corrupt each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vilalign.data.images import BadImageError, OnBadImage, load_image
from vilalign.data.transforms import ImageTransform
from vilalign.io import atomic_dir

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: rows are C×H×W
INDEX_FILE = "index.json"
ARRAY_FILE = "images.u8"


def default_cache_dir() -> Path:
    """``$VILALIGN_CACHE``, else ``$XDG_CACHE_HOME/vilalign``, else ``~/.cache/vilalign``."""
    if env := os.environ.get("VILALIGN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vilalign"


def fingerprint(paths: Sequence[str], settings: dict[str, Any]) -> str:
    """Hash of the sources (path, size, mtime) and the preprocessing settings."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, settings], sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:20]


class ImageCache:
    """A built cache: ``row(key)`` → row number, ``read(rows)`` → N×3×H×W uint8."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX_FILE).read_text())
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.keys: list[str] = index["keys"]
        self.bad: list[tuple[str, str]] = [tuple(b) for b in index["bad"]]  # type: ignore[misc]
        self.settings: dict[str, Any] = index["settings"]
        self._row = {k: i for i, k in enumerate(self.keys)}
        self._array: np.ndarray | None = None  # opened lazily, once per process

    def __len__(self) -> int:
        return self.shape[0]

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def row(self, key: str) -> int:
        return self._row[key]

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            # np.memmap refuses empty files; an all-bad dataset has zero rows
            if self.shape[0] == 0:
                self._array = np.zeros(self.shape, dtype=np.uint8)
            else:
                self._array = np.memmap(
                    self.folder / ARRAY_FILE, dtype=np.uint8, mode="r", shape=self.shape
                )
        return self._array

    def read(self, rows: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """One 3×H×W image (int) or N×3×H×W images (rows), copied out of the memmap."""
        return np.array(self.array[rows])

    def __getstate__(self) -> dict[str, Any]:
        # each DataLoader worker opens its own memmap instead of pickling the array
        return {**self.__dict__, "_array": None}


def open_or_build(
    name: str,
    paths: Sequence[str],
    transform: ImageTransform,
    cache_dir: str | Path | None = None,
    on_bad_image: OnBadImage = "error",
    workers: int = 0,
    progress: bool = True,
) -> ImageCache:
    """Open the cache for these image files and settings, building it if needed.

    ``paths`` are the unique image files; each becomes one row. Under ``on_bad_image=
    "error"`` the first bad file aborts the build with :class:`BadImageError` naming it;
    under ``"skip"`` bad files get no row and are listed in ``ImageCache.bad``.
    """
    settings = {**transform.cache_key(), "on_bad_image": on_bad_image}
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"{name}-{fingerprint(paths, settings)}"
    if not (folder / INDEX_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        # one builder at a time (DDP ranks, parallel runs); the others wait, then reuse it
        with _locked(folder.with_name(folder.name + ".lock")):
            if not (folder / INDEX_FILE).is_file():
                logger.info("image cache: building %s from %d images", folder, len(paths))
                _build(folder, paths, transform, settings, on_bad_image, workers, progress)
    with contextlib.suppress(OSError):  # record the use (for `vilalign cache --older-than`)
        os.utime(folder / INDEX_FILE)
    logger.info("image cache: using %s", folder)
    return ImageCache(folder)


# ---------------------------------------------------------------------------- housekeeping


@dataclass(frozen=True)
class CacheEntry:
    """One folder under the cache root: a cache, or a build a crash left behind."""

    folder: Path
    images: int  # rows (0 for a leftover build)
    shape: tuple[int, ...]  # one row's shape, (C, H, W); () for a leftover build
    size_bytes: int
    last_used: float  # seconds since the epoch: the last open (or the build)
    state: str  # "ready"; "old" (an earlier cache format: never read again); "incomplete"

    @property
    def name(self) -> str:
        return self.folder.name


def list_caches(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Every cache folder under ``cache_dir`` (default: :func:`default_cache_dir`), the
    least recently used first."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return []
    entries = []
    for folder in (p for p in root.iterdir() if p.is_dir()):
        index_file = folder / INDEX_FILE
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        try:
            index = json.loads(index_file.read_text())
            rows, *shape = (int(n) for n in index["shape"])
            state = "ready" if index.get("version") == CACHE_VERSION else "old"
            used = index_file.stat().st_mtime
            entries.append(CacheEntry(folder, rows, tuple(shape), size, used, state))
        except (OSError, ValueError, KeyError, TypeError):
            entries.append(CacheEntry(folder, 0, (), size, folder.stat().st_mtime, "incomplete"))
    return sorted(entries, key=lambda e: (e.last_used, e.name))


def remove_cache(entry: CacheEntry) -> None:
    """Delete one cache folder and its lock file (a later run simply rebuilds it)."""
    shutil.rmtree(entry.folder)
    with contextlib.suppress(FileNotFoundError):
        entry.folder.with_name(entry.folder.name + ".lock").unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: rely on the atomic rename alone
        yield
        return
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    folder: Path,
    paths: Sequence[str],
    transform: ImageTransform,
    settings: dict[str, Any],
    on_bad_image: OnBadImage,
    workers: int,
    progress: bool,
) -> None:
    # another builder that finished first (a crashed lock, a second machine) wins: use theirs
    with atomic_dir(folder, if_exists="keep") as tmp:
        keys, bad, shape = _write_rows(
            tmp / ARRAY_FILE, paths, transform, workers, progress, on_bad_image
        )
        index = {
            "version": CACHE_VERSION,
            "settings": settings,
            "shape": shape,
            "keys": keys,
            "bad": bad,
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index))


def _write_rows(
    file: Path,
    paths: Sequence[str],
    transform: ImageTransform,
    workers: int,
    progress: bool,
    on_bad_image: OnBadImage,
) -> tuple[list[str], list[list[str]], list[int]]:
    """Decode every image into consecutive rows; return (keys, bad, final shape)."""
    h, w = transform.size
    row_shape = (3, h, w)
    array = np.memmap(file, dtype=np.uint8, mode="w+", shape=(max(len(paths), 1), *row_shape))
    keys: list[str] = []
    bad: list[list[str]] = []
    results = _prepared(paths, transform, workers)
    for path, result in tqdm(
        results, total=len(paths), desc="caching images", disable=not progress, unit="img"
    ):
        if isinstance(result, BadImageError):
            if on_bad_image == "error":
                raise result
            bad.append([result.path, result.reason])
            continue
        array[len(keys)] = result
        keys.append(path)
    array.flush()
    del array
    # drop the rows reserved for bad images
    os.truncate(file, len(keys) * h * w * 3)
    return keys, bad, [len(keys), *row_shape]


def _prepare_one(args: tuple[str, ImageTransform]) -> tuple[str, np.ndarray | BadImageError]:
    path, transform = args
    try:
        return path, transform.prepare(load_image(path))
    except BadImageError as err:
        return path, err


_worker_transform: ImageTransform | None = None


def _init_worker(transform: ImageTransform) -> None:
    global _worker_transform
    _worker_transform = transform


def _prepare_in_worker(path: str) -> tuple[str, np.ndarray | BadImageError]:
    assert _worker_transform is not None
    return _prepare_one((path, _worker_transform))


def _prepared(
    paths: Sequence[str], transform: ImageTransform, workers: int
) -> Iterator[tuple[str, np.ndarray | BadImageError]]:
    """(path, uint8 image or the error) in input order, decoded inline or by a pool."""
    if workers <= 0:
        yield from (_prepare_one((p, transform)) for p in paths)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(transform,)) as pool:
        yield from pool.imap(_prepare_in_worker, paths, chunksize=64)

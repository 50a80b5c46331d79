"""Where collected representations live: in memory while they fit, else in files on disk.

Collection writes each layer's reduced states (N×D per pooled view, N×T×D for tokens)
row block by row block as batches pass. A :class:`Store` keeps them in memory while the
arrays fit half the memory budget (``analysis.memory_gb``) and puts the rest in ``.npy``
files (:class:`DiskRows`), so collecting any number of samples takes bounded memory on
CPU and on CUDA alike (states are copied to the host as they arrive).

:class:`DiskRows` is written with plain file writes and read on demand — a slice with one
file read, a list of rows through a memory map that is closed again — so a measure that
reads it block by block (:class:`~vilalign.analysis.measures.View` accepts it) holds only
its block in memory; ``np.asarray(rows)`` reads everything.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Share of the memory budget that collected arrays may take in memory.
IN_MEMORY_SHARE = 0.5


class NonFiniteRows(ValueError):
    """Collected states of ``key`` hold NaN or inf in rows ``rows`` (positions in the set)."""

    def __init__(self, key: Any, rows: list[int]) -> None:
        self.key, self.rows = key, rows
        super().__init__(f"{'/'.join(map(str, key))}: NaN or inf in rows {rows[:5]}")


class _Folder:
    """A temporary folder removed once nothing refers to it (every DiskRows is gone)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="vilalign-collect-"))
        weakref.finalize(self, shutil.rmtree, self.path, True)


class DiskRows:
    """Rows in an ``.npy`` file, read on demand: ``rows[a:b]``, ``rows[index]`` and
    ``np.asarray(rows)`` return numpy arrays; nothing stays mapped between reads."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int,
                 keep: _Folder | None = None) -> None:  # fmt: skip
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.offset, self._keep = offset, keep  # the folder lives as long as its files

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype: Any, keep: _Folder | None = None):
        """An ``.npy`` file of ``shape`` (sparse until written), loadable with ``np.load``."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": tuple(shape)}  # fmt: skip
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.truncate(offset + int(np.prod(shape)) * dtype.itemsize)
        return cls(path, shape, dtype, offset, keep)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def _row_items(self) -> int:
        return int(np.prod(self.shape[1:]))

    def head(self, n: int) -> DiskRows:
        """The first ``n`` rows (no copy)."""
        return DiskRows(self.path, (n, *self.shape[1:]), self.dtype, self.offset, self._keep)

    def write(self, start: int, values: np.ndarray) -> None:
        with open(self.path, "r+b") as f:
            f.seek(self.offset + start * self._row_items * self.dtype.itemsize)
            f.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(len(self))
            count = max(0, stop - start) * self._row_items
            begin = self.offset + start * self._row_items * self.dtype.itemsize
            flat = np.fromfile(self.path, dtype=self.dtype, count=count, offset=begin)
            return flat.reshape(max(0, stop - start), *self.shape[1:])
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        try:
            return np.array(mapped[index])
        finally:
            del mapped

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[0 : len(self)]
        return values if dtype is None else values.astype(dtype)


class Store:
    """Preallocated storage for ``n`` rows per key: in memory while the arrays fit
    ``memory_bytes``, then in files (in ``spill_dir``, or a temporary folder)."""

    def __init__(
        self, n: int, dtype: torch.dtype, spill_dir: Path | None, memory_bytes: float
    ) -> None:
        self.n, self.dtype, self.spill_dir = n, dtype, spill_dir
        self.memory_bytes = memory_bytes
        self.arrays: dict[Any, torch.Tensor | DiskRows] = {}
        self._in_memory = 0
        self._folder: _Folder | None = None

    def _allocate(self, key: Any, shape: tuple[int, ...]) -> torch.Tensor | DiskRows:
        size = int(np.prod(shape)) * torch.empty((), dtype=self.dtype).element_size()
        if self.spill_dir is None and self._in_memory + size <= self.memory_bytes:
            self._in_memory += size
            return torch.zeros(shape, dtype=self.dtype)
        folder = self.spill_dir
        if folder is None:
            self._folder = self._folder or _Folder()
            folder = self._folder.path
        name = "__".join(map(str, key if isinstance(key, tuple) else (key,))) + ".npy"
        np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
        return DiskRows.create(folder / name, shape, np_dtype, self._folder)

    def write(self, key: Any, start: int, values: torch.Tensor) -> None:
        """Rows ``start...`` of ``key``; NaN/inf rows raise :class:`NonFiniteRows` at once."""
        values = values.detach()
        finite = torch.isfinite(values).reshape(values.shape[0], -1).all(dim=1)
        if not bool(finite.all()):
            raise NonFiniteRows(key, (start + (~finite).nonzero()[:, 0].cpu()).tolist())
        values = values.to("cpu", self.dtype)
        if key not in self.arrays:
            self.arrays[key] = self._allocate(key, (self.n, *values.shape[1:]))
        target = self.arrays[key]
        if values.ndim == 3 and values.shape[1] != target.shape[1]:
            values = _pad_tokens(values, target.shape[1])
        if isinstance(target, torch.Tensor):
            target[start : start + values.shape[0]] = values
        else:
            target.write(start, values.numpy())

    def finish(self, n: int) -> dict[Any, torch.Tensor | DiskRows]:
        """The arrays cut to the ``n`` rows collected."""
        return {
            k: a[:n] if isinstance(a, torch.Tensor) else a.head(n) for k, a in self.arrays.items()
        }


def _pad_tokens(values: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad (B, T, D) token states to ``length`` (batches padded to their longest text)."""
    if values.shape[1] > length:
        raise ValueError(
            f"token view: a batch has {values.shape[1]} tokens but the first had {length}; "
            "collate with padding='max_length' to collect token states"
        )
    return torch.nn.functional.pad(values, (0, 0, 0, length - values.shape[1]))

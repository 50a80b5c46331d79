"""The memory budget and progress switch that every measure reads: one setting, many blocks.

``analysis.memory_gb`` (``vilalign analyse --memory-gb``) is the one knob: whether a
measure may build N×N matrices (its dense form, used while they fit) and how many rows a
block of a blocked or feature-space form holds are both derived from it here, so no
module keeps its own size constants. Settings are a context (``with settings(...)``), so
library calls deep inside a measure read them without every signature carrying them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from vilalign.analysis.defaults import DEFAULT_MEMORY_GB

#: N×N float64 matrices a view may hold at once in its dense form (centred Gram, cosine
#: Gram or distances, an RBF kernel or an RDM's ranks); a pair holds two views.
DENSE_COPIES = 3
#: Work (multiply-adds) above which a blocked pass shows a progress bar when asked to.
_PROGRESS_WORK = 2e10


#: ``Settings.form``: let each measure pick its cheapest exact form (None), or force the
#: N×N forms ("dense") or the feature-space / blocked forms ("blocked"). Forcing is for
#: tests and benchmarks that compare the two forms on the same inputs.
FORMS = (None, "dense", "blocked")


@dataclass(frozen=True)
class Settings:
    """What the measures may use: ``memory_gb`` for working blocks, ``progress`` bars, and
    which ``form`` to use (see :data:`FORMS`)."""

    memory_gb: float = DEFAULT_MEMORY_GB
    progress: bool = False
    form: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.memory_gb, int | float) and self.memory_gb > 0):
            raise ValueError(f"memory_gb must be a positive number, got {self.memory_gb!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")


# Settings is frozen: sharing the default instance is safe.
_SETTINGS: ContextVar[Settings] = ContextVar("vilalign_measure_settings", default=Settings())  # noqa: B039


def current() -> Settings:
    return _SETTINGS.get()


_UNSET: Any = object()


@contextmanager
def settings(
    memory_gb: float | None = None, progress: bool | None = None, form: str | None = _UNSET
) -> Iterator[Settings]:
    """Measure with this memory budget (GB), progress bars and/or form inside the block."""
    changes: dict[str, Any] = {}
    if memory_gb is not None:
        changes["memory_gb"] = memory_gb
    if progress is not None:
        changes["progress"] = progress
    if form is not _UNSET:
        changes["form"] = form
    token = _SETTINGS.set(replace(current(), **changes))
    try:
        yield current()
    finally:
        _SETTINGS.reset(token)


def budget_bytes() -> int:
    return int(current().memory_gb * 1e9)


def dense_fits(n: int, views: int = 2) -> bool:
    """Whether ``views`` views may each hold :data:`DENSE_COPIES` N×N float64 matrices."""
    return views * DENSE_COPIES * 8 * n * n <= budget_bytes()


def use_dense(available: bool, fits: bool, dense_cost: float, blocked_cost: float) -> bool:
    """Whether a measure takes its N×N (dense) form.

    ``available``: the dense inputs are already cached (then they are always used, unless
    the blocked form is forced); ``fits``: they would fit the budget; the costs are the
    multiply-adds still to do in each form.
    """
    form = current().form
    if form is not None:
        return form == "dense"
    return available or (fits and dense_cost <= blocked_cost)


def block_rows(row_bytes: int, rows: int, what: str, share: float = 0.25) -> int:
    """Rows per block so that a block of ``row_bytes`` per row uses ``share`` of the budget.

    Raises when not even one row fits: a budget that small would fail (or swap) hours
    later, so it is refused before any work, naming the numbers.
    """
    allowed = budget_bytes() * share
    if row_bytes > allowed:
        raise ValueError(
            f"{what}: one block row needs {row_bytes / 1e6:.3g} MB but the memory budget "
            f"(memory_gb={current().memory_gb:g}) leaves {allowed / 1e6:.3g} MB for it; "
            f"raise memory_gb (--memory-gb) to at least {row_bytes / share / 1e9:.3g}"
        )
    return max(1, min(rows, int(allowed // max(row_bytes, 1))))


def largest_dense_n(bytes_per_pair: float) -> int:
    """The largest N whose dense form (``bytes_per_pair`` × N² bytes) fits the budget."""
    return math.isqrt(int(budget_bytes() / bytes_per_pair))


def progress(total: int, work: float, desc: str) -> tqdm:
    """A progress bar over ``total`` blocks, shown only when asked for and the work is long."""
    show = current().progress and work >= _PROGRESS_WORK
    return tqdm(total=total, desc=desc, unit="block", disable=not show, leave=False)

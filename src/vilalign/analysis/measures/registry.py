"""The measure registry: every alignment measure is one :class:`Measure`, registered once.

A measure declares here what callers need to know about it — which inputs it takes
(``level``), the fewest samples it is defined on (``min_n``, and ``k + 1`` for a
measure with a ``k`` of neighbours), which direction is "more aligned", how to resample
it — so the analysis, the statistics and the config validation read the registration
instead of keeping lists of names. Adding a measure is one decorated function in one
family module (see ``vilalign.analysis.measures``); nothing else changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from vilalign.analysis.measures.linalg import Tensor
from vilalign.analysis.measures.views import Pair, View

T = TypeVar("T")

#: Pooled measures compare two N×D matrices of paired rows: ``impl(pair, **options)``.
POOLED = "pooled"
#: Token measures compare B×T×D text and B×P×D image states of the same B samples:
#: ``impl(text, image, text_mask=None, image_mask=None, **options)``.
TOKENS = "tokens"
LEVELS = (POOLED, TOKENS)

#: How a measure's confidence interval is drawn (implemented in ``analysis/stats.py``;
#: docs/statistics.md says which quantity each targets and how well it covers it):
#: "subsample" — delete-d jackknife on half-samples drawn without replacement, centred on
#: the estimate (no row is ever duplicated, so nothing a duplicate inflates is touched);
#: "subsample_bc" — the same, re-centred by the half-sample jackknife estimate of an
#: O(1/N) bias (for estimators biased towards their population value at small N);
#: "subsample_large" — the same as "subsample" on subsamples of 80 % of the rows, for a
#: measure whose regime changes with the sample size at a fixed k (cycle k-NN: on half
#: the rows nearly every sample closes a cycle, and the half-samples barely vary).
INTERVALS = ("subsample", "subsample_bc", "subsample_large")


@dataclass(frozen=True)
class Bias:
    """How a measure's estimate is biased, when, and what to do about it.

    ``min_ratio``: the bias matters while N < min_ratio × max(D1, D2) (None: at every N,
    e.g. a bias from a shared mean offset rather than from too few samples). The analysis
    warns with ``what`` and ``fix`` whenever :meth:`applies`.
    """

    what: str
    fix: str
    min_ratio: float | None = None

    def applies(self, n: int, dx: int, dy: int) -> bool:
        return self.min_ratio is None or n < self.min_ratio * max(dx, dy)

    def message(self, measure: str, n: int, dx: int, dy: int) -> str:
        at = f"N = {n}, D = {dx}/{dy}"
        return f"{measure} is biased at {at}: {self.what}. Fix: {self.fix}"


#: Gram-matrix measures with the biased HSIC (linear and RBF CKA): unrelated isotropic
#: features score about D/(N + D), 0.09 at N = 10·D and 0.5 at N = D.
GRAM_BIAS = Bias(
    "the biased HSIC estimator reads unrelated features as aligned (about D/(N+D) for "
    "isotropic ones)",
    "use cka_unbiased, or read the value against its permutation null (null_mean)",
    min_ratio=10,
)
#: Canonical correlations fit D directions to N samples: unrelated features reach a mean
#: canonical correlation of ~0.65 at N = 2·D and still ~0.3 at N = 10·D; Procrustes'
#: nuclear norm grows like √(D/N) for unrelated features.
FIT_BIAS = Bias(
    "it fits D directions to N samples, so unrelated features score far above 0 "
    "(its chance level shrinks only like √(D/N))",
    "use cka_unbiased or mutual_knn, or reduce D (PCA) and read the value against its "
    "permutation null (null_mean)",
    min_ratio=100,
)
#: Cosine of uncentred rows: a mean offset both streams share makes unrelated pairs close.
OFFSET_BIAS = Bias(
    "uncentred cosine is high for unrelated rows that share a mean offset",
    "read it against its permutation null (null_mean), or use cka_unbiased (centred)",
)


@dataclass(frozen=True)
class Measure:
    """A registered alignment measure; call it as ``measure(x, y, **options)``.

    ``level`` says what it is called with: :data:`POOLED` measures take two N×D
    representations (``impl`` works on a :class:`Pair`, with shared caches),
    :data:`TOKENS` measures take token states and masks, ``measure(text, image,
    text_mask=None, image_mask=None)``. ``min_n`` is the fewest samples it is defined on;
    a parameter called ``k`` is a number of neighbours, so it also needs ``k + 1``
    samples (self is excluded): see :meth:`min_samples`. ``higher_is_better``/``best``
    tell the statistics which tail is "more aligned" and what a perfect score is.
    ``resample`` says how to draw confidence intervals ("bootstrap" with replacement, or
    "subsample" without replacement where duplicated rows would bias the estimate:
    duplicates become each other's nearest neighbours, put diagonal terms back into the
    unbiased HSIC, shrink the effective rank that CCA fits, and add zero dissimilarities
    to both RDMs). ``pairing_invariant`` marks measures that ignore which row goes with
    which (a permutation test of the pairing is meaningless for them); ``equal_dims``
    those that need D1 == D2. ``interval`` names how :mod:`~vilalign.analysis.stats`
    draws its confidence interval (one of :data:`INTERVALS`); ``bias``, when set, says
    how and when its estimate is biased (the analysis warns then). ``null``, when given,
    evaluates the measure on many permutations of y's rows at once, ``null(x_view,
    y_view, perms, **options) -> values`` (see :meth:`permuted_values`).
    ``blocks_over_n`` marks measures whose blocked form holds rows of N values (k-NN, RBF
    kernels): the memory budget must fit one such row.
    """

    name: str
    impl: Callable[..., float]
    higher_is_better: bool = True
    best: float = 1.0
    resample: str = "bootstrap"
    pairing_invariant: bool = False
    equal_dims: bool = False
    level: str = POOLED
    min_n: int = 2
    doc: str = ""
    interval: str = "subsample"
    bias: Bias | None = None
    null: Callable[..., Sequence[float]] | None = None
    blocks_over_n: bool = False

    def __call__(self, x: Any, y: Any, *masks: Any, **options: Any) -> float:
        if self.level == TOKENS:
            return float(self.impl(x, y, *masks, **options))
        pair = self._named(None, lambda: Pair(x, y))
        return self._named(pair, lambda: float(self.impl(pair, *masks, **options)))

    def evaluate(self, pair: Pair, **options: Any) -> Result:
        """The measure on ``pair`` with how many rows it used (fewer than N when it
        subsampled to fit the memory budget)."""
        value = self._named(pair, lambda: float(self.impl(pair, **options)))
        return Result(value, pair.rows.get(self.name, pair.n))

    def permuted_values(
        self, x: View, y: View, perms: Iterable[Tensor], **options: Any
    ) -> np.ndarray:
        """The measure on (x, y with rows reordered by each of ``perms``): a permutation
        null's draws, one per permutation, in order.

        The registration's ``null`` is used when given. Otherwise each permutation is a
        :meth:`View.permuted` view, which re-derives what a permutation does not change
        (covariances, means, norms — so feature-space CKA pays only xcᵀ·P·yc) or only
        renames (Gram matrices, k-NN lists) instead of recomputing it; a measure that
        ignores the pairing is evaluated once (every permutation gives its value).
        """
        if self.null is not None:
            values = self._named(None, lambda: self.null(x, y, perms, **options))
            return np.asarray(values, dtype=np.float64)
        if self.pairing_invariant:
            value = self.evaluate(Pair(x, y), **options).value
            return np.full(sum(1 for _ in perms), value)
        return np.array([self.evaluate(Pair(x, y.permuted(p)), **options).value for p in perms])

    def _named(self, pair: Pair | None, fn: Callable[[], T]) -> T:
        """Run ``fn``; a ValueError says which measure (and which views) it came from."""
        try:
            return fn()
        except ValueError as err:
            if str(err).startswith(f"{self.name}"):
                raise
            where = f" on {pair.x.name} vs {pair.y.name}" if pair is not None else ""
            raise ValueError(f"{self.name}{where}: {err}") from err

    @property
    def defaults(self) -> dict[str, Any]:
        """The options ``impl`` takes, with their default values."""
        params = inspect.signature(self.impl).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def min_samples(self, options: Mapping[str, Any] | None = None) -> int:
        """The fewest samples this measure is defined on with ``options``."""
        k = {**self.defaults, **(options or {})}.get("k")
        return max(self.min_n, k + 1) if isinstance(k, int) else self.min_n


@dataclass(frozen=True)
class Result:
    """A pooled measure's value and the number of rows it was computed on (N unless the
    measure subsampled to fit the memory budget, e.g. RSA and Wasserstein at large N)."""

    value: float
    rows: int


#: Every registered measure, of every level, in registration order: the one owner.
REGISTRY: dict[str, Measure] = {}


def register(name: str, **meta: Any) -> Callable[[Callable[..., float]], Measure]:
    """Decorator: register ``impl`` under ``name``; ``meta`` sets the :class:`Measure`
    fields (``level``, ``min_n``, ``resample``, ...)."""

    def deco(impl: Callable[..., float]) -> Measure:
        if name in REGISTRY:
            raise ValueError(f"measure {name!r} is already registered")
        if meta.get("level", POOLED) not in LEVELS:
            raise ValueError(f"measure {name!r}: level {meta['level']!r} is not one of {LEVELS}")
        if meta.get("interval", INTERVALS[0]) not in INTERVALS:
            raise ValueError(
                f"measure {name!r}: interval {meta['interval']!r} is not one of {INTERVALS}"
            )
        measure = Measure(name=name, impl=impl, doc=(impl.__doc__ or "").strip(), **meta)
        REGISTRY[name] = measure
        return measure

    return deco


def get_measure(name: str) -> Measure:
    """The registered measure called ``name`` (any level); the error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown measure {name!r}; known: {sorted(REGISTRY)}") from None


class _Level(Mapping[str, Measure]):
    """The registered measures of one level: a live, read-only view of :data:`REGISTRY`."""

    def __init__(self, level: str) -> None:
        self.level = level

    def __getitem__(self, name: str) -> Measure:
        measure = REGISTRY[name]
        if measure.level != self.level:
            raise KeyError(name)
        return measure

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in list(REGISTRY.items()) if m.level == self.level)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"measures_for({self.level!r}): {list(self)}"


_LEVEL_VIEWS = {level: _Level(level) for level in LEVELS}


def measures_for(level: str) -> Mapping[str, Measure]:
    """The measures of ``level`` (:data:`POOLED` or :data:`TOKENS`), by name, live."""
    if level not in _LEVEL_VIEWS:
        raise ValueError(f"level {level!r} is not one of {LEVELS}")
    return _LEVEL_VIEWS[level]


#: The pooled measures (``measure(x, y)`` on N×D rows), by name.
MEASURES = measures_for(POOLED)
#: The token-level measures (``measure(text, image, text_mask)``), by name.
TOKEN_MEASURES = measures_for(TOKENS)


def compute_measures(
    x: Tensor | View,
    y: Tensor | View,
    names: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Run several pooled measures on one pair, sharing Gram matrices, k-NN lists and factors.

    ``options`` maps a measure name to its keyword arguments (e.g. ``{"mutual_knn":
    {"k": 20}}``). Passing :class:`View` objects reuses their caches across pairs.
    ``names=None`` runs every registered pooled measure that applies (paired cosine only
    for equal widths). :func:`measure_results` also says how many rows each used.
    """
    return {name: r.value for name, r in measure_results(x, y, names, options).items()}


def measure_results(
    x: Tensor | View,
    y: Tensor | View,
    names: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Result]:
    """:func:`compute_measures` with each value's :class:`Result` (value and rows used)."""
    options = options or {}
    pair = Pair(x, y)
    if names is None:  # every measure that applies to these widths
        same = pair.x.d == pair.y.d
        names = [n for n, m in MEASURES.items() if same or not m.equal_dims]
    measures = [get_measure(name) for name in names]
    for m in measures:
        if m.level != POOLED:
            raise ValueError(f"{m.name} is a {m.level}-level measure: call it on token states")
    unknown = set(options) - {m.name for m in measures}
    if unknown:
        raise ValueError(f"options given for measures not requested: {sorted(unknown)}")
    return {m.name: m.evaluate(pair, **options.get(m.name, {})) for m in measures}

"""Views and pairs: one representation with its cached derived quantities, and two paired.

A :class:`View` caches what one representation needs (Gram matrix, centred Gram, cosine
Gram, k-NN lists, feature covariance and its factors) and a :class:`Pair` caches cross
terms, so several measures — or a layer×layer grid that reuses the same views — compute
each Gram matrix and neighbour list once. Both validate their input: degenerate data
raises a ``ValueError`` that names the problem instead of becoming a silent NaN.

Scale: a view reads its rows in blocks from whatever holds them (a tensor on any device,
a numpy array, a memory-mapped file of collected states) and converts each block to
float64 only when it is used; the full float64 matrix is materialised only while it is
small (1/64 of the memory budget, :mod:`.budget`). N×N matrices are built only by the
measures' dense forms, which are chosen only while they fit the budget; every quantity
here also has a form whose memory grows linearly in N: blocked feature-space products
(covariances, cross-covariances), blocked row statistics, and certified blocked k-NN
lists (:mod:`.topk`).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vilalign.analysis.measures import budget
from vilalign.analysis.measures.linalg import (
    DTYPE,
    HSIC_MIN_N,
    Tensor,
    double_centre,
    frobenius_dot,
    hsic_unbiased,
    self_product,
)
from vilalign.analysis.measures.topk import (
    Neighbours,
    certified_neighbours,
    cosines_at,
    exact_rows_topk,
    order_ties,
    topk_by_index,
)

log = logging.getLogger(__name__)

#: Seed of the rows a subsampling measure keeps (the same rows for every call on one N).
SUBSAMPLE_SEED = 0
_SUBSAMPLED: set[tuple] = set()  # (measure, views, N, rows) already logged

#: A view converts its rows to one float64 matrix up front while it takes at most this
#: share of the memory budget (a layer×layer grid holds dozens of views at once); above
#: it, rows are converted block by block (and whole only if a dense form asks for them).
_DENSE_ROWS_SHARE = 1 / 64

# --------------------------------------------------------------------------- validation


def _source(x: Any, name: str) -> Any:
    """The object holding the rows: a detached tensor, a numpy array (memory maps too), or
    any array-like whose slices and index lists are numpy arrays (e.g. ``DiskRows``)."""
    if isinstance(x, torch.Tensor):
        src = x.detach()
    elif isinstance(x, np.ndarray) or all(hasattr(x, a) for a in ("shape", "ndim", "__getitem__")):
        src = x
    else:
        raise ValueError(f"{name} must be a torch.Tensor or an array, got {type(x).__name__}")
    if src.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(src.shape)}")
    if src.shape[1] < 1:
        raise ValueError(f"{name} has no features (shape {tuple(src.shape)})")
    return src


def _to_float64(block: Any, device: torch.device) -> Tensor:
    if not isinstance(block, torch.Tensor):  # a numpy array, or an array-like's whole
        block = torch.from_numpy(np.ascontiguousarray(np.asarray(block)))
    return block.to(device=device, dtype=DTYPE)


def need_n(view: View, min_n: int, what: str) -> None:
    if view.n < min_n:
        raise ValueError(f"{what} needs N >= {min_n} samples, got N={view.n}")


def _check_k(k: int, n: int) -> None:
    # Self is excluded from its own neighbours, so at most N-1 neighbours exist.
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(f"k={k} neighbours needs k < N, got N={n} (self is excluded)")


def candidates_for(k: int) -> int:
    """Neighbours kept per row when k are asked: enough that a half-sample (the subsample
    intervals) still finds its k nearest among them (≥ k of 3k+16 candidates survive a
    random half with probability > 1 − 1e-9), so intervals reuse one blocked pass."""
    return 3 * k + 16


# --------------------------------------------------------------------------- derivation


def _rows_rule(value: Any, index: Tensor, same_set: bool) -> Any:
    return value[index]


def _pairwise_rule(value: Tensor, index: Tensor, same_set: bool) -> Tensor:
    return value[index][:, index]


def _cos_rule(value: Tensor, index: Tensor, same_set: bool) -> Tensor:
    sliced = value[index][:, index]
    if same_set:
        return sliced
    # Repeated rows are identical (cosine 1), not "self" (the −2 of the diagonal).
    sliced[index[:, None] == index[None, :]] = 1.0
    return sliced.fill_diagonal_(-2.0)


def _gram_rule(value: Tensor, index: Tensor, same_set: bool) -> Tensor:
    # A subset is re-centred: H_S (Kc)_S H_S = centred Gram of S.
    sliced = value[index][:, index]
    return sliced if same_set else double_centre(sliced)


def _keep_rule(value: Any, index: Tensor, same_set: bool) -> Any:
    return value


def _offsets_rule(value: tuple[Tensor, float], index: Tensor, same_set: bool) -> Any:
    a, c = value
    return a[index], c


def _inverse(index: Tensor) -> Tensor:
    inv = torch.empty_like(index)
    inv[index] = torch.arange(index.numel(), device=index.device)
    return inv


def _neighbours_rule(value: Tensor | Neighbours, index: Tensor, same_set: bool) -> Any:
    """Row i of the permuted view is parent row π(i); its neighbours are the parent's
    neighbours of π(i), renamed: π⁻¹(N(π(i))). O(N·k), no similarity recomputed."""
    inv = _inverse(index)
    if isinstance(value, Neighbours):
        return Neighbours(inv[value.index[index]], value.values[index], value.certified[index])
    return inv[value[index]]


def _rbf_rule(value: tuple, index: Tensor, same_set: bool) -> tuple:
    kernel, rowsum, total, normsq = value
    return kernel[index][:, index], rowsum[index], total, normsq


def _upper_position(i: Tensor, j: Tensor, n: int) -> Tensor:
    """Position of (min(i,j), max(i,j)) in the row-by-row strict upper triangle of n×n."""
    lo, hi = torch.minimum(i, j), torch.maximum(i, j)
    return lo * (2 * n - lo - 1) // 2 + (hi - lo - 1)


def _ranks_rule(value: Tensor, index: Tensor, same_set: bool) -> Tensor:
    """Ranks of a permuted RDM's upper triangle: the same values in a new order, so their
    ranks are the parent's ranks re-indexed (O(N²), no sort)."""
    n = index.numel()
    rows, cols = torch.triu_indices(n, n, 1, device=index.device)
    return value[_upper_position(index[rows], index[cols], n)]


# Quantities derived order-free from the parent under a permutation of the rows.
_ORDER_FREE_KEYS = (
    "spread",
    "gram_c_dot",
    "hsic_u_self",
    "cov",
    "cov_raw",
    "pca",
    "axes",
    "whitener",
    "mean",
    "sqdist_median",
)
#: name -> (only under a permutation?, derive(parent value, index, same_set)): how a
#: permuted or subset view takes a cache entry from its parent instead of recomputing it.
_RULES: dict[str, tuple[bool, Callable[[Any, Tensor, bool], Any]]] = {
    "x": (False, _rows_rule),
    "row_norms": (False, _rows_rule),
    "row_norms_sq": (False, _rows_rule),
    "unit32": (False, _rows_rule),
    "cos_gram": (False, _cos_rule),
    "sqdist": (False, _pairwise_rule),
    "gram_c": (False, _gram_rule),
    "diag_c": (True, _rows_rule),
    "offsets": (True, _offsets_rule),
    "knn": (True, _neighbours_rule),
    "nbrs": (True, _neighbours_rule),
    "rbf": (True, _rbf_rule),
    "rdm_rank": (True, _ranks_rule),
    **{key: (True, _keep_rule) for key in _ORDER_FREE_KEYS},
}


def _key_name(key: Any) -> str:
    return key[0] if isinstance(key, tuple) else key


# --------------------------------------------------------------------------- the view


class View:
    """One representation (N×D) with lazily cached derived quantities.

    Build one per (layer, stream) and pass it to several measures or several pairs: the
    Gram matrix, neighbour lists and covariance factors are then computed once. ``x`` may
    be a tensor (any float dtype, any device) or a numpy array / memory map; ``device``
    says where the float64 blocks are computed (default: the tensor's, else the CPU).
    """

    def __init__(self, x: Tensor | np.ndarray, name: str = "x", device: Any = None) -> None:
        src = _source(x, name)
        self.name = name
        self._src: Any = src
        self._shape = (int(src.shape[0]), int(src.shape[1]))
        on = src.device if isinstance(src, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device) if device is not None else on
        self._cache: dict[Any, Any] = {}
        self._parent: tuple[View, Tensor, bool] | None = None
        if self.n < 2:
            raise ValueError(f"{name} has N={self.n} rows; this needs N >= 2")
        if self.small:
            self.x  # noqa: B018 (materialised now: the dense forms read it)
        self._check_finite()

    @property
    def n(self) -> int:
        return self._shape[0]

    @property
    def d(self) -> int:
        return self._shape[1]

    @property
    def small(self) -> bool:
        """Whether the float64 rows are kept whole (a small share of the memory budget)."""
        return self.n * self.d * 8 <= _DENSE_ROWS_SHARE * budget.budget_bytes()

    def _check_finite(self) -> None:
        # One float64 reduction per block instead of an elementwise mask: a NaN or ±inf
        # anywhere makes the sum non-finite (finite values cannot overflow a float64 sum).
        # The column sums give the mean of a view read in blocks: one pass for both.
        bad: list[Tensor] = []
        sums = torch.zeros(self.d, dtype=DTYPE, device=self.device)
        for start, stop in self.blocks(self.d * 8, "checking values"):
            block = self.rows(start, stop)
            column = block.sum(dim=0)
            if not math.isfinite(float(column.sum())):
                bad.append((~torch.isfinite(block).all(dim=1)).nonzero()[:, 0] + start)
            sums += column
        if not bad and "x" not in self._cache:
            self._cache["mean"] = sums / self.n
        if bad:
            rows = torch.cat(bad).tolist()
            raise ValueError(
                f"{self.name} contains NaN or inf values in {len(rows)} of {self.n} rows "
                f"(first: {rows[:5]})"
            )

    # -- caches and derived views -----------------------------------------------------
    def _cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            derived = self._from_parent(key)
            self._cache[key] = fn() if derived is None else derived
        return self._cache[key]

    def has(self, key: Any) -> bool:
        """Whether ``key`` is cached here, or derivable from a parent view without work
        that grows faster than the entry itself."""
        if key in self._cache:
            return True
        if self._parent is None:
            return False
        parent, _, same_set = self._parent
        rule = _RULES.get(_key_name(key))
        return rule is not None and (same_set or not rule[0]) and parent.has(key)

    def permuted(self, perm: Tensor) -> View:
        """The same view with rows reordered; Gram-like caches are re-indexed, not recomputed.

        Why: a permutation null recomputes a measure hundreds of times on the same rows in
        a new order; permuting an N×N matrix costs O(N²), recomputing it O(N²·D), and
        renaming a k-NN list O(N·k). Entries are taken from the parent lazily, only when a
        measure asks for them.
        """
        return self._take(perm, same_set=True)

    def subset(self, index: Tensor) -> View:
        """The view restricted to rows ``index`` (repeats allowed, as in a bootstrap).

        Only caches that depend on single rows or pairs of rows (raw and cosine Gram,
        distances) carry over; centred quantities depend on the whole set and are redone.
        k-NN lists of a subset without repeats come from the parent's blocked candidate
        lists (see :meth:`knn`).
        """
        return self._take(index, same_set=False)

    def _take(self, index: Tensor, same_set: bool) -> View:
        index = index.to(self.device)
        out = View.__new__(View)
        out.name, out._src, out.device, out._cache = self.name, None, self.device, {}
        out._shape = (int(index.numel()), self.d)
        out._parent = (self, index, same_set)
        return out

    def _from_parent(self, key: Any) -> Any:
        """A cache entry derived from the parent view's, or None if it must be computed."""
        if self._parent is None:
            return None
        parent, index, same_set = self._parent
        rule = _RULES.get(_key_name(key))
        if rule is None or (rule[0] and not same_set):
            return None
        if key not in parent._cache:  # the parent may itself derive it from its parent
            derived = parent._from_parent(key)
            if derived is None:
                return None
            parent._cache[key] = derived
        return rule[1](parent._cache[key], index, same_set)

    # -- rows -------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        """Every row in float64 on the view's device (N·D·8 bytes, kept once made)."""

        def make() -> Tensor:
            if self._parent is None:  # no copy when the input is float64 on this device
                return _to_float64(self._src, self.device)
            parent, index, _ = self._parent
            return parent.take(index)

        return self._cached("x", make)

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` in float64 on the view's device."""
        if "x" in self._cache:
            return self._cache["x"][start:stop]
        if self._parent is not None:
            parent, index, _ = self._parent
            return parent.take(index[start:stop])
        return _to_float64(self._src[start:stop], self.device)

    def take(self, index: Tensor) -> Tensor:
        """Rows ``index`` (any order, repeats allowed) in float64 on the view's device."""
        if "x" in self._cache:
            return self._cache["x"][index.to(self.device)]
        if self._parent is not None:
            parent, own, _ = self._parent
            return parent.take(own[index.to(own.device)])
        src = self._src
        if isinstance(src, torch.Tensor):
            return _to_float64(src[index.to(src.device)], self.device)
        return _to_float64(src[index.cpu().numpy()], self.device)

    def blocks(self, row_bytes: int, what: str, share: float = 0.25) -> Iterator[tuple[int, int]]:
        """(start, stop) of row blocks whose working set of ``row_bytes`` per row fits
        ``share`` of the memory budget."""
        step = budget.block_rows(row_bytes, self.n, f"{self.name}: {what}", share)
        for start in range(0, self.n, step):
            yield start, min(self.n, start + step)

    def centred_rows(self, start: int, stop: int, center: bool = True) -> Tensor:
        block = self.rows(start, stop)
        return block - self.mean()[None, :] if center else block

    # -- sample space (N×N: the dense forms) -------------------------------------------
    def _dense(self, what: str) -> None:
        """Refuse an N×N matrix that cannot fit the budget at all (a safety net: the
        measures choose their dense forms only when they fit)."""
        need = 8 * self.n * self.n
        if need > budget.budget_bytes() and budget.current().form is None:
            raise ValueError(
                f"{self.name}: {what} of N={self.n} rows needs {need / 1e9:.3g} GB, over the "
                f"memory budget (memory_gb={budget.current().memory_gb:g})"
            )

    def gram_c(self) -> Tensor:
        """Centred Gram xc xcᵀ (N×N): the one N×N matmul a view's dense forms need.

        Everything else in sample space derives from it in O(N²): distances (translation
        invariant), the raw Gram Kc + a1ᵀ + 1aᵀ + c (see ``_offsets``), cosines, HSIC.
        Centring the features first (not double-centring x xᵀ) costs no precision to a
        large feature mean.
        """

        def make() -> Tensor:
            self._dense("the centred Gram matrix")
            return self_product(self.centred(), outer=True)

        return self._cached("gram_c", make)

    def _offsets(self) -> tuple[Tensor, float]:
        """a = xc·m and c = m·m, so that the raw Gram x xᵀ = Kc + a1ᵀ + 1aᵀ + c."""

        def make() -> tuple[Tensor, float]:
            m = self.mean()
            return self.centred() @ m, float(m @ m)

        return self._cached("offsets", make)

    def spread(self) -> float:
        """‖xc‖²_F = tr(Kc); raises when every row is the same (constant features).

        It is zero up to rounding (~eps·‖x‖) only then; a test relative to ‖x‖ tolerates
        any feature mean, and costs one pass over x (no Gram matrix needed).
        """

        def make() -> float:
            if "x" in self._cache:
                xc = self.centred()
                value = float(frobenius_dot(xc, xc))
            else:  # Σ‖xc_i‖², the diagonal a pair's feature pass also fills
                value = float(self.diag_c().sum())
            mean = self.mean()
            total = value + self.n * float(mean @ mean)  # ‖x‖²_F = ‖xc‖²_F + N‖m‖²
            if value <= 0 or value <= (1e-12) ** 2 * total:
                raise ValueError(f"{self.name} has constant features (all rows equal)")
            return value

        return self._cached("spread", make)

    def _centred_blocks(self, center: bool = True) -> Iterator[Tensor]:
        for start, stop in self.blocks(self.d * 8 * 2, "feature products"):
            yield self.centred_rows(start, stop, center)

    def diag_c(self) -> Tensor:
        """‖xc_i‖² (N,): the diagonal of the centred Gram, from it or from the rows."""

        def make() -> Tensor:
            if self.has("gram_c"):
                return self.gram_c().diagonal()
            return torch.cat([(b * b).sum(dim=1) for b in self._centred_blocks()])

        return self._cached("diag_c", make)

    def _gram_form(self) -> bool:
        """Whether this view's self terms come from its centred Gram (else from cov)."""
        n, d = self.n, self.d
        dense = n * n * d / 2 + n * n
        features = (0 if self.has("cov") else n * d * d / 2) + d * d
        return budget.use_dense(self.has("gram_c"), budget.dense_fits(n, 1), dense, features)

    def gram_c_dot(self) -> float:
        """‖Kc‖²_F = ‖xcᵀxc‖²_F; raises when every row is the same (constant features)."""

        def make() -> float:
            self.spread()
            if self._gram_form():
                kc = self.gram_c()
                return float(frobenius_dot(kc, kc))
            cov = self.cov()
            return float(frobenius_dot(cov, cov))

        return self._cached("gram_c_dot", make)

    def gram_c_norm(self) -> float:
        """Frobenius norm of the centred Gram; raises when every row is the same."""
        return math.sqrt(self.gram_c_dot())

    def hsic_u_self(self) -> float:
        """Unbiased HSIC(K, K); must be positive for CKA to be defined."""

        def make() -> float:
            need_n(self, HSIC_MIN_N, "the unbiased HSIC estimator")
            dot = self.gram_c_dot()
            value = hsic_unbiased(dot, self.diag_c(), self.diag_c())
            if value <= 0:
                raise ValueError(
                    f"{self.name}: unbiased HSIC(K, K) = {value:.3g} <= 0 (degenerate "
                    "representation, e.g. nearly constant features or N too small)"
                )
            return value

        return self._cached("hsic_u_self", make)

    def row_norms_sq(self) -> Tensor:
        def make() -> Tensor:
            if "x" in self._cache:
                return (self.x * self.x).sum(dim=1)
            blocks = self.blocks(self.d * 8, "row norms")
            return torch.cat([(b * b).sum(dim=1) for b in (self.rows(*ab) for ab in blocks)])

        return self._cached("row_norms_sq", make)

    def row_norms(self) -> Tensor:
        def make() -> Tensor:
            norms = self.row_norms_sq().sqrt()
            if bool((norms <= 1e-12 * norms.max().clamp_min(1e-300)).any()):
                raise ValueError(f"{self.name} has an all-zero row: its cosine is undefined")
            return norms

        return self._cached("row_norms", make)

    def cos_gram(self) -> Tensor:
        """Cosine similarity of rows, with the diagonal set to −2 (below any cosine).

        The diagonal is never used as a similarity: −2 keeps a sample out of its own
        neighbour list without a copy of the matrix, and stays finite for masks.
        """

        def make() -> Tensor:
            a, c = self._offsets()
            u = a + c / 2
            cos = self.gram_c() + u[:, None]  # raw Gram x xᵀ = Kc + u1ᵀ + 1uᵀ, in place
            cos += u[None, :]
            inv = 1.0 / self.row_norms()
            cos *= inv[:, None]
            cos *= inv[None, :]
            return cos.fill_diagonal_(-2.0)

        return self._cached("cos_gram", make)

    def sqdist(self) -> Tensor:
        """Squared Euclidean distances between rows, from the centred Gram."""

        def make() -> Tensor:
            kc = self.gram_c()
            sq = kc.diagonal()
            dist = (sq[:, None] + sq[None, :]).sub_(kc, alpha=2.0).clamp_min_(0.0)
            return dist.fill_diagonal_(0.0)

        return self._cached("sqdist", make)

    # -- neighbours -------------------------------------------------------------------
    def unit_rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` scaled to unit length (float64)."""
        return self.rows(start, stop) / self.row_norms()[start:stop, None]

    def unit_take(self, index: Tensor) -> Tensor:
        return self.take(index) / self.row_norms()[index.to(self.device), None]

    def unit32(self) -> Tensor:
        """Unit rows in float32 (N×D): the operands of the blocked k-NN similarity."""

        def make() -> Tensor:
            blocks = self.blocks(self.d * 12, "unit rows")
            return torch.cat([self.unit_rows(a, b).float() for a, b in blocks])

        return self._cached("unit32", make)

    def cos_at(self, index: Tensor) -> Tensor:
        """cos(x_i, x_index[i, a]) (N×k float64): from the cosine Gram if there is one,
        else as N·k dot products of rows (no N×N matrix)."""
        if self.has("cos_gram"):
            return self.cos_gram().gather(1, index)
        return cosines_at(self, torch.arange(self.n, device=self.device), index)

    def knn(self, k: int) -> Tensor:
        """Indices (N×k) of each row's k nearest rows by cosine, self excluded, nearest first.

        platonic-rep conventions (Huh et al. 2024, ``metrics.py``): features L2-normalised,
        the diagonal masked so a sample is never its own neighbour. Dense form: top-k of
        the cosine Gram (while it fits the budget); blocked form: certified float32
        products with a running top-k (:func:`.topk.certified_neighbours`), the same sets.
        """
        _check_k(k, self.n)
        return self._cached(("knn", k), lambda: self._knn(k))

    def _knn(self, k: int) -> Tensor:
        shared = self.has("cos_gram") or self.has("gram_c")  # another measure's Gram
        if not shared:
            derived = self._subset_knn(k)
            if derived is not None:
                return derived
        # The products cost the same (a float64 syrk or float32 blocks); beyond them the
        # dense form makes ~10 passes over N×N float64 values, the blocked one gathers
        # ~(3k+16)·D float64 values per row (at ~20 and ~120 multiply-adds each, measured).
        n, d = self.n, self.d
        dense = n * n * (d / 2 + 200)
        blocked = n * n * d / 2 + 120 * n * candidates_for(k) * d
        if budget.use_dense(shared, budget.dense_fits(n, 1), dense, blocked):
            return self._knn_dense(k)
        return self.neighbours(k).index[:, :k]

    def _knn_dense(self, k: int) -> Tensor:
        self.spread()  # all rows equal: every neighbour ties
        cos = self.cos_gram()
        # Every row has the direction of row 0 iff row 0's cosines (bar its own −2)
        # are all 1: one row decides, no N×N pass.
        if float(cos[0, 1:].min()) >= 1 - 1e-12:
            raise ValueError(f"{self.name}: all rows have the same direction (k-NN ties)")
        return topk_by_index(cos, k)[0]

    def neighbours(self, k: int) -> Neighbours:
        """Blocked, certified candidate lists with at least ``k`` exact neighbours per row."""
        cached = self._cache.get("nbrs")
        if cached is None and self.has("nbrs"):  # renamed from the parent's lists
            cached = self._cache["nbrs"] = self._from_parent("nbrs")
        if cached is not None and bool((cached.certified >= k).all()):
            return cached
        self.spread()
        first = self.unit_rows(0, 1)[0]
        lowest = min(float((self.unit_rows(a, b) @ first)[1 if a == 0 else 0 :].min())
                     for a, b in self.blocks(self.d * 8, "k-NN"))  # fmt: skip
        if lowest >= 1 - 1e-12:
            raise ValueError(f"{self.name}: all rows have the same direction (k-NN ties)")
        found = certified_neighbours(self, min(candidates_for(k), self.n - 1), k)
        self._cache["nbrs"] = found
        return found

    def _subset_knn(self, k: int) -> Tensor | None:
        """k-NN of a subset (no repeats) from the parent's certified candidate lists: a
        row's nearest rows within the subset are its first candidates that are in it
        (ties re-ordered by position in the subset). Rows left with fewer than k
        certified candidates are recomputed exactly."""
        if self._parent is None:
            return None
        parent, index, same_set = self._parent
        if same_set or "nbrs" not in parent._cache:
            return None
        nb: Neighbours = parent._cache["nbrs"]
        if nb.index.shape[1] < k or torch.unique(index).numel() != index.numel():
            return None
        position = torch.full((parent.n,), -1, dtype=torch.long, device=index.device)
        position[index] = torch.arange(index.numel(), device=index.device)
        cand = position[nb.index[index]]  # (m, c) positions in the subset, −1: not in it
        column = torch.arange(cand.shape[1], device=cand.device)
        valid = (cand >= 0) & (column[None, :] < nb.certified[index][:, None])
        values = torch.where(valid, nb.values[index], -torch.inf)
        order, _ = order_ties(values, torch.where(valid, cand, self.n))
        out = cand.gather(1, order)[:, :k]
        missing = (valid.sum(dim=1) < k).nonzero()[:, 0]
        if missing.numel():
            out[missing] = exact_rows_topk(self, missing, k)
        return out

    # -- feature space ----------------------------------------------------------------
    def centred(self, center: bool = True) -> Tensor:
        """All rows centred (N×D float64): the dense forms' input."""
        if not center:
            return self.x
        return self._cached("centred", lambda: self.x - self.mean()[None, :])

    def mean(self) -> Tensor:
        """Feature means (D,)."""

        def make() -> Tensor:
            if "x" in self._cache:
                return self.x.mean(dim=0)
            blocks = self.blocks(self.d * 8, "feature means")
            return sum(self.rows(a, b).sum(dim=0) for a, b in blocks) / self.n

        return self._cached("mean", make)

    def cov(self, center: bool = True) -> Tensor:
        """Unnormalised feature covariance xcᵀ xc (D×D); the raw xᵀx when not ``center``.

        Accumulated over row blocks when the rows are not kept whole: O(N·D²) time and
        D² memory whatever N.
        """

        def make() -> Tensor:
            if "x" in self._cache:
                return self_product(self.centred(center), outer=False)
            total = torch.zeros(self.d, self.d, dtype=DTYPE, device=self.device)
            for block in self._centred_blocks(center):
                total += self_product(block, outer=False)
            return total

        return self._cached("cov" if center else "cov_raw", make)

    def pca(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (descending, = squared singular values of xc) and eigenvectors of cov."""

        def make() -> tuple[Tensor, Tensor]:
            self.spread()
            evals, evecs = torch.linalg.eigh(self.cov())
            return evals.flip(0).clamp_min(0.0), evecs.flip(1)

        return self._cached("pca", make)

    def axes(self, dim: int) -> Tensor:
        """The top ``dim`` principal axes (D×dim) with a canonical sign.

        An eigenvector's sign is arbitrary (the solver's choice); a measure that compares
        projections of two different views (Wasserstein between widths) would change with
        it. Each axis is oriented so that the projected data have a positive third moment
        (the heavier tail on the positive side), which depends on the data only; a
        symmetric projection (third moment ~0) falls back to the largest-magnitude
        component being positive.
        """

        def make() -> Tensor:
            evecs = self.pca()[1]
            third = torch.zeros(evecs.shape[1], dtype=DTYPE, device=self.device)
            scale = torch.zeros_like(third)
            for block in self._centred_blocks():
                proj = block @ evecs
                third += (proj**3).sum(dim=0)
                scale += proj.abs().pow(3).sum(dim=0)
            biggest = evecs.gather(0, evecs.abs().argmax(dim=0, keepdim=True))[0]
            sign = torch.where(third.abs() > 1e-9 * scale, third.sign(), biggest.sign())
            return evecs * sign[None, :]

        return self._cached("axes", make)[:, :dim]

    def whitener(self, center: bool = True) -> _Whitener:
        """W (D×r) with Wᵀ cov W = I on the column space of xc: xc·W is an orthonormal basis.

        Cholesky when cov is well conditioned (fast; W = L⁻ᵀ is applied by triangular
        solves, never formed); otherwise the eigen-decomposition with a rank tolerance, so
        directions of zero variance (D ≥ N, collinear features) do not enter CCA as
        spurious perfect correlations.
        """

        def make() -> _Whitener:
            self.spread()
            cov = self.cov(center)
            chol, info = torch.linalg.cholesky_ex(cov)
            diag = chol.diagonal()
            if int(info) == 0 and float(diag.min() / diag.max()) > 1e-6:
                return _Whitener(chol=chol)
            evals, evecs = torch.linalg.eigh(cov)
            keep = evals > evals.max() * self.d * torch.finfo(DTYPE).eps * 1e3
            return _Whitener(basis=evecs[:, keep] / evals[keep].sqrt())

        return self._cached(("whitener", center), make)


@dataclass(frozen=True)
class _Whitener:
    """W = L⁻ᵀ (from a Cholesky factor L) or an explicit basis W = V Λ^{-1/2}."""

    chol: Tensor | None = None
    basis: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.chol.shape[0] if self.chol is not None else self.basis.shape[1]

    def t_apply(self, a: Tensor) -> Tensor:
        """Wᵀ a."""
        if self.chol is not None:
            return torch.linalg.solve_triangular(self.chol, a, upper=False)
        return self.basis.T @ a

    def apply(self, u: Tensor) -> Tensor:
        """W u."""
        if self.chol is not None:
            return torch.linalg.solve_triangular(self.chol.T, u, upper=True)
        return self.basis @ u


class Pair:
    """Two views of the same N samples plus their cached cross terms.

    ``rows`` records, per measure name, how many rows a measure that subsampled (RSA,
    Wasserstein above their memory limit) was computed on; absent: all N.
    """

    def __init__(self, x: Tensor | View, y: Tensor | View) -> None:
        self.x = x if isinstance(x, View) else View(x, "x")
        self.y = y if isinstance(y, View) else View(y, "y")
        if self.x.n != self.y.n:
            raise ValueError(f"x and y must have the same N, got {self.x.n} and {self.y.n}")
        if self.x.device != self.y.device:
            raise ValueError(f"x is on {self.x.device} but y is on {self.y.device}")
        self._cache: dict[Any, Any] = {}
        self.rows: dict[str, int] = {}

    @property
    def n(self) -> int:
        return self.x.n

    def _cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def subsample(self, measure: str, limit: int) -> Pair:
        """This pair, or the pair on a seeded subsample of ``limit`` rows when N is larger.

        For the measures with no exact form whose memory grows linearly in N (RSA,
        Wasserstein): never a silent cut — the size is recorded in ``rows[measure]``
        (the table's row count) and logged once per measure and pair of views. The rows
        are drawn with :data:`SUBSAMPLE_SEED` from N alone, so every call on the same N
        (a permuted pair of a null too) uses the same positions.
        """
        if self.n <= limit:
            return self
        if limit < 3:
            raise ValueError(
                f"{measure}: the memory budget (memory_gb={budget.current().memory_gb:g}) "
                f"fits {limit} rows of its dense form; raise memory_gb"
            )
        rows = torch.randperm(self.n, generator=torch.Generator().manual_seed(SUBSAMPLE_SEED))
        rows = rows[:limit].sort().values.to(self.x.device)
        self.rows[measure] = limit
        key = (measure, self.x.name, self.y.name, self.n, limit)
        if key not in _SUBSAMPLED:
            _SUBSAMPLED.add(key)
            log.warning(
                "%s on %s vs %s: N=%d rows exceed the %d whose dense form fits the memory "
                "budget (memory_gb=%g); computed on a seeded subsample of %d rows (seed %d)",
                measure, self.x.name, self.y.name, self.n, limit,
                budget.current().memory_gb, limit, SUBSAMPLE_SEED,
            )  # fmt: skip
        return Pair(self.x.subset(rows), self.y.subset(rows))

    def gram_form(self) -> bool:
        """Whether ⟨Kc, Lc⟩ comes from the two centred Grams (else from xcᵀyc): the cheaper
        of the two for these N and D, counting what is already cached, and the Grams
        only while they fit the memory budget."""
        n, dx, dy = self.n, self.x.d, self.y.d
        cached = self.x.has("gram_c") and self.y.has("gram_c")
        dense = sum(0 if v.has("gram_c") else n * n * v.d / 2 for v in (self.x, self.y)) + n * n
        features = sum(0 if v.has("cov") else n * v.d * v.d / 2 for v in (self.x, self.y))
        features += n * dx * dy + dx * dx + dy * dy
        return budget.use_dense(cached, budget.dense_fits(n), dense, features)

    def gram_c_dot(self) -> float:
        """⟨Kc, Lc⟩_F = ‖xcᵀyc‖²_F, shared by the linear CKA variants."""

        def make() -> float:
            if self.gram_form():
                self.x.spread(), self.y.spread()  # raise on constant features first
                return float(frobenius_dot(self.x.gram_c(), self.y.gram_c()))
            cross = self.cross_cov()  # one pass fills the views' self terms too
            self.x.spread(), self.y.spread()
            return float(frobenius_dot(cross, cross))

        return self._cached("gram_c_dot", make)

    def cross_cov(self, center: bool = True) -> Tensor:
        """xcᵀ yc (D1×D2) (raw xᵀy when not ``center``), accumulated over row blocks.

        Read in blocks, the pass also accumulates what the views still lack of their own
        covariances and centred row norms: one read of each view's rows for all of them.
        """

        def make() -> Tensor:
            x, y = self.x, self.y
            if "x" in x._cache and "x" in y._cache:
                return x.centred(center).T @ y.centred(center)
            return self._feature_pass(center)

        return self._cached(("cross_cov", center), make)

    def _feature_pass(self, center: bool) -> Tensor:
        """xcᵀyc over row blocks, filling the views' missing ``cov``/``diag_c`` on the way."""
        x, y = self.x, self.y
        key = "cov" if center else "cov_raw"
        views = [x] if y is x else [x, y]
        own = [v for v in views if not v.has(key)]
        norms = [v for v in views if center and not v.has("diag_c")]
        covs = {id(v): torch.zeros(v.d, v.d, dtype=DTYPE, device=v.device) for v in own}
        diags: dict[int, list[Tensor]] = {id(v): [] for v in norms}
        total = torch.zeros(x.d, y.d, dtype=DTYPE, device=x.device)
        row_bytes = (x.d + y.d) * 8 * 3
        for start, stop in x.blocks(row_bytes, f"feature products with {y.name}"):
            blocks = {id(v): v.centred_rows(start, stop, center) for v in views}
            total += blocks[id(x)].T @ blocks[id(y)]
            for v in own:
                covs[id(v)] += self_product(blocks[id(v)], outer=False)
            for v in norms:
                diags[id(v)].append((blocks[id(v)] ** 2).sum(dim=1))
        for v in own:
            v._cache[key] = covs[id(v)]
        for v in norms:
            v._cache["diag_c"] = torch.cat(diags[id(v)])
        return total

    def whitened_cross(self, center: bool = True) -> Tensor:
        """Wxᵀ Cxy Wy (rx×ry): the cross-covariance of orthonormal bases of both views.

        Its singular values are the canonical correlations (Hotelling 1936); it is Qxᵀ Qy
        of Kornblith et al.'s QR formulation, reached through D×D factors instead.
        """

        def make() -> Tensor:
            cross = self.cross_cov(center)  # first: its pass also fills the covariances
            wx, wy = self.x.whitener(center), self.y.whitener(center)
            left = wx.t_apply(cross)  # Wxᵀ Cxy
            return wy.t_apply(left.T).T  # (Wyᵀ (Wxᵀ Cxy)ᵀ)ᵀ = Wxᵀ Cxy Wy

        return self._cached(("whitened_cross", center), make)

    def canonical_correlations(self, center: bool = True) -> Tensor:
        """Canonical correlations, descending (``svdvals``; no singular vectors needed)."""

        def make() -> Tensor:
            return torch.linalg.svdvals(self.whitened_cross(center)).clamp(0.0, 1.0)

        return self._cached(("rho", center), make)

    def canonical_directions(self, center: bool = True) -> tuple[Tensor, Tensor]:
        """Canonical correlations and the x-side canonical directions (D1×r).

        Left singular vectors from ``eigh`` of M Mᵀ: on CPU, LAPACK's full SVD of a D×D
        matrix is often an order of magnitude slower than the symmetric eigensolver.
        """

        def make() -> tuple[Tensor, Tensor]:
            m = self.whitened_cross(center)
            r = min(m.shape)
            evals, evecs = torch.linalg.eigh(m @ m.T)
            u = evecs.flip(1)[:, :r]
            rho = evals.flip(0)[:r].clamp(0.0, 1.0).sqrt()
            return rho, self.x.whitener(center).apply(u)

        return self._cached(("cca_dirs", center), make)

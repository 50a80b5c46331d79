"""Alignment measures between two representations of the same N samples, one registry.

Every measure compares ``x`` (N×D1) and ``y`` (N×D2), whose rows are paired (row i of
both is sample i), and returns a float. Measures run on torch tensors on any device and
compute in float64: the unbiased HSIC estimator and the CCA whitening subtract large,
nearly equal terms, where float32 loses the answer.

Work is shared: a :class:`View` caches what one representation needs (Gram matrix,
centred Gram, cosine Gram, k-NN lists, feature covariance and its factors) and a
:class:`Pair` caches cross terms, so :func:`compute_measures` — or a layer×layer grid
that reuses the same views — computes each Gram matrix and neighbour list once.

Degenerate input never turns into a silent NaN: N too small, all rows equal, zero rows
where a cosine is needed, k ≥ N, NaN/inf values, or mismatched shapes raise a
``ValueError`` that names the problem.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch

log = logging.getLogger(__name__)

Tensor = torch.Tensor
_DTYPE = torch.float64

# --------------------------------------------------------------------------- validation


def _check_matrix(x: Tensor, name: str, min_n: int = 2) -> None:
    """Raise ValueError unless ``x`` is a finite 2-D tensor with at least ``min_n`` rows."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(x.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} has N={x.shape[0]} rows; this needs N >= {min_n}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    # One float64 reduction instead of an elementwise mask: a NaN or ±inf anywhere makes
    # the sum non-finite (finite values cannot overflow a float64 sum).
    if not math.isfinite(float(x.sum(dtype=torch.float64))):
        raise ValueError(f"{name} contains NaN or inf values")


def _need_n(view: View, min_n: int, what: str) -> None:
    if view.n < min_n:
        raise ValueError(f"{what} needs N >= {min_n} samples, got N={view.n}")


def _check_k(k: int, n: int) -> None:
    # Self is excluded from its own neighbours, so at most N-1 neighbours exist.
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(f"k={k} neighbours needs k < N, got N={n} (self is excluded)")


# --------------------------------------------------------------------------- caches

# View cache entries that are N×N matrices of pairwise quantities (re-indexed when rows
# are taken) and entries that do not depend on the order of rows (kept under a
# permutation). The centred Gram is re-indexed, and re-centred for a subset.
_PAIRWISE_KEYS = frozenset({"cos_gram", "sqdist"})
_ORDER_FREE_KEYS = frozenset(
    {"spread", "gram_c_dot", "hsic_u_self", "cov", "cov_raw", "pca", "whitener"}
)


def _self_product(a: Tensor, outer: bool) -> Tensor:
    """a aᵀ (``outer``) or aᵀ a, exactly symmetric.

    On CPU numpy computes ``a @ a.T`` with BLAS ``syrk`` (it sees that the operands are
    one buffer), half the flops of the general product torch uses: the Gram matrix is
    the floor of every kernel measure, so this halves the suite's largest cost.
    """
    if a.device.type == "cpu":
        arr = a.contiguous().numpy()
        return torch.from_numpy(arr @ arr.T if outer else arr.T @ arr)
    return a @ a.T if outer else a.T @ a


class View:
    """One representation (N×D) with lazily cached derived quantities.

    Build one per (layer, stream) and pass it to several measures or several pairs: the
    Gram matrix, neighbour lists and covariance factors are then computed once.
    """

    def __init__(self, x: Tensor, name: str = "x") -> None:
        _check_matrix(x, name)
        self.name = name
        self.x = x.detach().to(_DTYPE)
        self._cache: dict[Any, Any] = {}
        self._parent: tuple[View, Tensor, bool] | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def _cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            derived = self._from_parent(key)
            self._cache[key] = fn() if derived is None else derived
        return self._cache[key]

    def permuted(self, perm: Tensor) -> View:
        """The same view with rows reordered; Gram-like caches are re-indexed, not recomputed.

        Why: a permutation null recomputes a measure hundreds of times on the same rows in
        a new order; permuting an N×N matrix costs O(N²), recomputing it O(N²·D). Entries
        are taken from the parent lazily, only when a measure asks for them.
        """
        return self._take(perm, same_set=True)

    def subset(self, index: Tensor) -> View:
        """The view restricted to rows ``index`` (repeats allowed, as in a bootstrap).

        Only caches that depend on single rows or pairs of rows (raw and cosine Gram,
        distances) carry over; centred quantities depend on the whole set and are redone.
        """
        return self._take(index, same_set=False)

    def _take(self, index: Tensor, same_set: bool) -> View:
        index = index.to(self.x.device)
        out = View.__new__(View)
        out.name, out.x, out._cache = self.name, self.x[index], {}
        out._parent = (self, index, same_set)
        return out

    def _from_parent(self, key: Any) -> Any:
        """A cache entry derived from the parent view's, or None if it must be computed."""
        if self._parent is None:
            return None
        parent, index, same_set = self._parent
        if key not in parent._cache:  # the parent may itself derive it from its parent
            derived = parent._from_parent(key)
            if derived is None:
                return None
            parent._cache[key] = derived
        value = parent._cache[key]
        name = key[0] if isinstance(key, tuple) else key
        if name == "cos_gram" and not same_set:
            # Repeated rows are identical (cosine 1), not "self" (the −2 of the diagonal).
            sliced = value[index][:, index]
            sliced[index[:, None] == index[None, :]] = 1.0
            return sliced.fill_diagonal_(-2.0)
        if name in _PAIRWISE_KEYS:
            return value[index][:, index]
        if name == "gram_c":  # a subset is re-centred: H_S (Kc)_S H_S = centred Gram of S
            sliced = value[index][:, index]
            return sliced if same_set else _double_centre(sliced)
        if name == "row_norms":
            return value[index]
        if same_set and name in _ORDER_FREE_KEYS:
            return value
        if same_set and name == "rbf":
            kernel, rowsum, total, normsq = value
            return kernel[index][:, index], rowsum[index], total, normsq
        return None

    # -- sample space ---------------------------------------------------------------
    def gram_c(self) -> Tensor:
        """Centred Gram xc xcᵀ (N×N): the one N×N matmul a view needs.

        Everything else in sample space derives from it in O(N²): distances (translation
        invariant), the raw Gram Kc + a1ᵀ + 1aᵀ + c (see ``_offsets``), cosines, HSIC.
        Centring the features first (not double-centring x xᵀ) costs no precision to a
        large feature mean.
        """
        return self._cached("gram_c", lambda: _self_product(self.centred(), outer=True))

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
            xc = self.centred()
            value = float(_dot(xc, xc))
            mean = self.mean()
            total = value + self.n * float(mean @ mean)  # ‖x‖²_F = ‖xc‖²_F + N‖m‖²
            if value <= 0 or value <= (1e-12) ** 2 * total:
                raise ValueError(f"{self.name} has constant features (all rows equal)")
            return value

        return self._cached("spread", make)

    def gram_c_dot(self) -> float:
        """‖Kc‖²_F; raises when every row is the same (constant features)."""

        def make() -> float:
            self.spread()
            kc = self.gram_c()
            return float(_dot(kc, kc))

        return self._cached("gram_c_dot", make)

    def gram_c_norm(self) -> float:
        """Frobenius norm of the centred Gram; raises when every row is the same."""
        return math.sqrt(self.gram_c_dot())

    def hsic_u_self(self) -> float:
        """Unbiased HSIC(K, K); must be positive for CKA to be defined."""

        def make() -> float:
            _need_n(self, 4, "the unbiased HSIC estimator")
            kc = self.gram_c()
            value = _hsic_unbiased_centred(kc, kc, self.gram_c_dot())
            if value <= 0:
                raise ValueError(
                    f"{self.name}: unbiased HSIC(K, K) = {value:.3g} <= 0 (degenerate "
                    "representation, e.g. nearly constant features or N too small)"
                )
            return value

        return self._cached("hsic_u_self", make)

    def row_norms_sq(self) -> Tensor:
        return self._cached("row_norms_sq", lambda: (self.x * self.x).sum(dim=1))

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

    def knn(self, k: int) -> Tensor:
        """Indices (N×k) of each row's k nearest rows by cosine, self excluded, nearest first.

        platonic-rep conventions (Huh et al. 2024, ``metrics.py``): features L2-normalised,
        the diagonal masked so a sample is never its own neighbour.
        """
        _check_k(k, self.n)

        def make() -> Tensor:
            self.spread()  # all rows equal: every neighbour ties
            cos = self.cos_gram()
            # Every row has the direction of row 0 iff row 0's cosines (bar its own −2)
            # are all 1: one row decides, no N×N pass.
            if float(cos[0, 1:].min()) >= 1 - 1e-12:
                raise ValueError(f"{self.name}: all rows have the same direction (k-NN ties)")
            return torch.topk(cos, k, dim=1).indices

        return self._cached(("knn", k), make)

    # -- feature space --------------------------------------------------------------
    def centred(self, center: bool = True) -> Tensor:
        if not center:
            return self.x
        return self._cached("centred", lambda: self.x - self.mean()[None, :])

    def mean(self) -> Tensor:
        """Feature means (D,)."""
        return self._cached("mean", lambda: self.x.mean(dim=0))

    def cov(self, center: bool = True) -> Tensor:
        """Unnormalised feature covariance xcᵀ xc (D×D); the raw xᵀx when not ``center``."""
        key = "cov" if center else "cov_raw"
        return self._cached(key, lambda: _self_product(self.centred(center), outer=False))

    def pca(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (descending, = squared singular values of xc) and eigenvectors of cov."""

        def make() -> tuple[Tensor, Tensor]:
            self.spread()
            evals, evecs = torch.linalg.eigh(self.cov())
            return evals.flip(0).clamp_min(0.0), evecs.flip(1)

        return self._cached("pca", make)

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
            keep = evals > evals.max() * self.d * torch.finfo(_DTYPE).eps * 1e3
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
    """Two views of the same N samples plus their cached cross terms."""

    def __init__(self, x: Tensor | View, y: Tensor | View) -> None:
        self.x = x if isinstance(x, View) else View(x, "x")
        self.y = y if isinstance(y, View) else View(y, "y")
        if self.x.n != self.y.n:
            raise ValueError(f"x and y must have the same N, got {self.x.n} and {self.y.n}")
        if self.x.x.device != self.y.x.device:
            raise ValueError(f"x is on {self.x.x.device} but y is on {self.y.x.device}")
        self._cache: dict[Any, Any] = {}

    @property
    def n(self) -> int:
        return self.x.n

    def _cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def gram_c_dot(self) -> float:
        """⟨Kc, Lc⟩_F, shared by the linear CKA variants."""
        self.x.spread(), self.y.spread()  # raise on constant features first
        return self._cached("gram_c_dot", lambda: float(_dot(self.x.gram_c(), self.y.gram_c())))

    def cross_cov(self, center: bool = True) -> Tensor:
        """xcᵀ yc (D1×D2) (raw xᵀy when not ``center``)."""
        return self._cached(
            ("cross_cov", center), lambda: self.x.centred(center).T @ self.y.centred(center)
        )

    def whitened_cross(self, center: bool = True) -> Tensor:
        """Wxᵀ Cxy Wy (rx×ry): the cross-covariance of orthonormal bases of both views.

        Its singular values are the canonical correlations (Hotelling 1936); it is Qxᵀ Qy
        of Kornblith et al.'s QR formulation, reached through D×D factors instead.
        """

        def make() -> Tensor:
            wx, wy = self.x.whitener(center), self.y.whitener(center)
            left = wx.t_apply(self.cross_cov(center))  # Wxᵀ Cxy
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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Measure:
    """A registered alignment measure: call it as ``measure(x, y, **kwargs)``.

    ``impl`` works on a :class:`Pair` (shared caches). ``higher_is_better``/``best`` tell
    the statistics which tail is "more aligned" and what a perfect score is. ``resample``
    says how to draw confidence intervals ("bootstrap" with replacement, or "subsample"
    without replacement where duplicated rows would bias the estimate: duplicates become
    each other's nearest neighbours, put diagonal terms back into the unbiased HSIC, shrink
    the effective rank that CCA fits, and add zero dissimilarities to both RDMs).
    ``pairing_invariant`` marks measures that ignore which row goes with which (a
    permutation test of the pairing is meaningless for them); ``equal_dims`` those that
    need D1 == D2.
    """

    name: str
    impl: Callable[..., float]
    higher_is_better: bool = True
    best: float = 1.0
    resample: str = "bootstrap"
    pairing_invariant: bool = False
    equal_dims: bool = False
    doc: str = ""

    def __call__(self, x: Tensor | View, y: Tensor | View, **kwargs: Any) -> float:
        return float(self.impl(Pair(x, y), **kwargs))


MEASURES: dict[str, Measure] = {}


def register(name: str, **meta: Any) -> Callable[[Callable[..., float]], Measure]:
    """Decorator: register ``impl(pair, **kwargs) -> float`` under ``name``."""

    def deco(impl: Callable[..., float]) -> Measure:
        if name in MEASURES:
            raise ValueError(f"measure {name!r} is already registered")
        measure = Measure(name=name, impl=impl, doc=(impl.__doc__ or "").strip(), **meta)
        MEASURES[name] = measure
        return measure

    return deco


def get_measure(name: str) -> Measure:
    """The registered measure called ``name``; the error lists the known names."""
    try:
        return MEASURES[name]
    except KeyError:
        raise ValueError(f"unknown measure {name!r}; known: {sorted(MEASURES)}") from None


def compute_measures(
    x: Tensor | View,
    y: Tensor | View,
    names: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Run several measures on one pair, sharing Gram matrices, k-NN lists and factors.

    ``options`` maps a measure name to its keyword arguments (e.g. ``{"mutual_knn":
    {"k": 20}}``). Passing :class:`View` objects reuses their caches across pairs.
    ``names=None`` runs every registered measure that applies (paired cosine only for
    equal widths).
    """
    options = options or {}
    pair = Pair(x, y)
    if names is None:  # every measure that applies to these widths
        same = pair.x.d == pair.y.d
        names = [n for n, m in MEASURES.items() if same or not m.equal_dims]
    names = list(names)
    unknown = set(options) - set(names)
    if unknown:
        raise ValueError(f"options given for measures not requested: {sorted(unknown)}")
    return {name: float(get_measure(name).impl(pair, **options.get(name, {}))) for name in names}


# --------------------------------------------------------------------------- kernels


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨A, B⟩_F in one fused pass (no N×N temporary)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _double_centre(k: Tensor) -> Tensor:
    row = k.mean(dim=1, keepdim=True)
    return k - row - row.T + row.mean()


def _hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, JMLR 13, eq. 5) of zero-diagonal K̃, L̃, in O(N²).

    HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) − 2/(n-2)·1ᵀK̃L̃1] / (n(n-3)),
    with 1ᵀK̃L̃1 = (K̃ᵀ1)·(L̃1) and tr(K̃L̃) = Σ K̃∘L̃ᵀ, which also holds for the
    non-symmetric masked kernels of CKNNA (as in platonic-rep's ``hsic_unbiased``).
    """
    n = k.shape[0]
    trace = (k * l.T).sum()
    sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
    cross = 2.0 * (k.sum(dim=0) @ l.sum(dim=1)) / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def _hsic_unbiased_centred(kc: Tensor, lc: Tensor, dot: float) -> float:
    """The same estimator from centred Grams Kc, Lc and ⟨Kc, Lc⟩_F, with no N² pass.

    HSIC₁ is invariant to centring the features (U-centring, Székely & Rizzo 2014), so it
    may be computed from Kc. With K̃ = Kc − diag(d_K): Kc·1 = 0 gives K̃1 = −d_K and
    1ᵀK̃1 = −Σd_K, and tr(K̃L̃) = ⟨Kc, Lc⟩ − d_K·d_L.
    """
    n = kc.shape[0]
    dk, dl = kc.diagonal(), lc.diagonal()
    dkdl = float(dk @ dl)
    trace = dot - dkdl
    sums = float(dk.sum()) * float(dl.sum()) / ((n - 1) * (n - 2))
    cross = 2.0 * dkdl / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


@register("cka_linear")
def _cka_linear(p: Pair) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. 4): ⟨Kc, Lc⟩_F / (‖Kc‖_F ‖Lc‖_F), the
    biased-HSIC estimator (its 1/(n-1)² cancels); equals the RV coefficient of the centred
    data. Biased upward for N small relative to D."""
    return p.gram_c_dot() / (p.x.gram_c_norm() * p.y.gram_c_norm())


@register("cka_unbiased", resample="subsample")
def _cka_unbiased(p: Pair) -> float:
    """Debiased linear CKA: unbiased HSIC (Song et al. 2012) in the numerator *and* the
    normalisation, as in Nguyen et al. 2021 and Kornblith's demo (``debiased=True``).

    Some libraries divide the unbiased numerator by biased self-HSICs; that is not the
    estimator of the paper. Bootstraps by subsampling: a duplicated row puts a diagonal
    term back into the off-diagonal sum this estimator was built to exclude.
    """
    _need_n(p.x, 4, "the unbiased HSIC estimator")
    kxy = _hsic_unbiased_centred(p.x.gram_c(), p.y.gram_c(), p.gram_c_dot())
    return kxy / math.sqrt(p.x.hsic_u_self() * p.y.hsic_u_self())


_TRIU_CACHE: dict[tuple[int, str], Tensor | np.ndarray] = {}


def _triu_selector(n: int, device: torch.device) -> Tensor | np.ndarray:
    """Flat indices (numpy, CPU) or a boolean mask (other devices) of the strict upper
    triangle of an n×n matrix, cached per size."""
    key = (n, str(device))
    if key not in _TRIU_CACHE:
        if len(_TRIU_CACHE) > 8:
            _TRIU_CACHE.clear()
        if device.type == "cpu":
            rows, cols = np.triu_indices(n, 1)
            _TRIU_CACHE[key] = rows * n + cols
        else:
            ones = torch.ones(n, n, dtype=torch.bool, device=device)
            _TRIU_CACHE[key] = torch.triu(ones, diagonal=1)
    return _TRIU_CACHE[key]


def _upper(mat: Tensor) -> Tensor:
    """The strict upper triangle of a square matrix, row by row.

    On CPU a numpy ``take`` of cached flat indices is several times faster than
    ``masked_select``.
    """
    selector = _triu_selector(mat.shape[0], mat.device)
    if isinstance(selector, np.ndarray):
        return torch.from_numpy(np.take(mat.contiguous().numpy().reshape(-1), selector))
    return mat.masked_select(selector)


def _kth_smallest(values: Tensor, ranks: list[int]) -> list[float]:
    """Values at 1-indexed ``ranks`` of ``values`` sorted ascending (one numpy partition on
    CPU, ``kthvalue`` elsewhere)."""
    if values.device.type == "cpu":
        part = np.partition(values.numpy(), [r - 1 for r in ranks])
        return [float(part[r - 1]) for r in ranks]
    return [float(torch.kthvalue(values, r).values) for r in ranks]


def _median_distance(sq: Tensor) -> float:
    """numpy's median of a whole N×N distance matrix (zero diagonal), from its upper half.

    Kornblith et al.'s ``gram_rbf`` takes ``np.median`` over the full matrix, diagonal
    zeros included (the mean of the two middle values). Sorted, that matrix is N zeros
    followed by every upper value twice, so the value at rank p > N is the upper value at
    rank ⌈(p − N)/2⌉: two selections on half the entries instead of all of them.
    """
    n = sq.shape[0]
    total = n * n
    middle = sorted({(total + 1) // 2, total // 2 + 1})  # one rank when N² is odd
    # A rank p <= N falls on the diagonal zeros; otherwise on upper rank ⌈(p − N)/2⌉.
    upper_ranks = sorted({(p - n + 1) // 2 for p in middle if p > n})
    found = dict(zip(upper_ranks, _kth_smallest(_upper(sq), upper_ranks), strict=True))
    values = [found[(p - n + 1) // 2] if p > n else 0.0 for p in middle]
    return sum(values) / len(values)


def _rbf_kernel(view: View, threshold: float) -> tuple[Tensor, Tensor, float, float]:
    """RBF Gram K, its row sums, total and ‖HKH‖²_F (centring is never materialised)."""

    def make() -> tuple[Tensor, Tensor, float, float]:
        sq = view.sqdist()
        # Kornblith et al.'s heuristic: σ² = threshold² × median squared distance.
        sq_median = _median_distance(sq)
        if sq_median <= 0:
            raise ValueError(f"{view.name}: median pairwise distance is 0 (constant rows)")
        k = sq.mul(-1.0 / (2 * threshold**2 * sq_median)).exp_()
        rowsum = k.sum(dim=1)
        total = float(rowsum.sum())
        n = k.shape[0]
        normsq = float(_dot(k, k)) - 2.0 / n * float(rowsum @ rowsum) + total**2 / n**2
        if normsq <= 1e-24 * n * n:
            raise ValueError(f"{view.name}: RBF Gram matrix is constant")
        return k, rowsum, total, normsq

    return view._cached(("rbf", threshold), make)


@register("cka_rbf")
def _cka_rbf(p: Pair, threshold: float = 1.0) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019), bandwidth σ = ``threshold`` × median
    pairwise distance; ⟨HKH, HLH⟩ = ⟨K, L⟩ − 2/n (K1)·(L1) + (1ᵀK1)(1ᵀL1)/n²."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    k, rk, tk, nk = _rbf_kernel(p.x, threshold)
    l, rl, tl, nl = _rbf_kernel(p.y, threshold)
    n = p.n
    cross = float(_dot(k, l)) - 2.0 / n * float(rk @ rl) + tk * tl / n**2
    return cross / math.sqrt(nk * nl)


class MinibatchCKA:
    """Linear CKA accumulated over minibatches (Nguyen, Raghu & Kornblith 2021, ICLR).

    CKA_mb = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b)),
    with HSIC₁ the unbiased estimator, which keeps the average unbiased whatever the
    batch size. Memory is one batch's Gram matrices, so N can be arbitrarily large.
    """

    def __init__(self) -> None:
        self._sums = torch.zeros(3, dtype=_DTYPE)
        self.batches = 0

    def update(self, x: Tensor | View, y: Tensor | View) -> None:
        """Add one minibatch of paired rows (needs at least 4 rows)."""
        pair = Pair(x, y)
        _need_n(pair.x, 4, "a minibatch of the unbiased HSIC estimator")
        kc, lc = pair.x.gram_c(), pair.y.gram_c()
        terms = torch.tensor(
            [
                _hsic_unbiased_centred(kc, lc, pair.gram_c_dot()),
                _hsic_unbiased_centred(kc, kc, pair.x.gram_c_dot()),
                _hsic_unbiased_centred(lc, lc, pair.y.gram_c_dot()),
            ],
            dtype=_DTYPE,
        )
        self._sums += terms
        self.batches += 1

    def compute(self) -> float:
        """The accumulated CKA; raises if no batch was added or a self-HSIC is not positive."""
        if self.batches == 0:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        kl, kk, ll = (float(v) for v in self._sums / self.batches)
        if kk <= 0 or ll <= 0:
            raise ValueError(f"degenerate minibatches: mean HSIC(K,K)={kk:.3g}, (L,L)={ll:.3g}")
        return kl / math.sqrt(kk * ll)


def minibatch_cka(
    x: Tensor | View,
    y: Tensor | View,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Minibatch CKA over consecutive batches (shuffled first if ``generator`` is given).

    A final batch with fewer than 4 rows is dropped (the estimator needs n > 3). Views
    whose Gram matrix is already cached give each batch's Gram by slicing it.
    """
    pair = Pair(x, y)
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4, got {batch_size}")
    n = pair.n
    order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
    acc = MinibatchCKA()
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if idx.numel() >= 4:
            acc.update(pair.x.subset(idx), pair.y.subset(idx))
    return acc.compute()


@register("cka_minibatch", resample="subsample")
def _cka_minibatch(p: Pair, batch_size: int = 256) -> float:
    """Minibatch linear CKA with the unbiased HSIC (Nguyen et al. 2021); see MinibatchCKA."""
    return minibatch_cka(p.x, p.y, batch_size=batch_size)


# --------------------------------------------------------------------------- CCA family


def _warn_if_trivial(p: Pair, rx: int, ry: int) -> None:
    if rx + ry > p.n - 1:
        log.warning(
            "CCA with ranks %d + %d > N-1 = %d: at least %d canonical correlations are 1 "
            "by construction; reduce dimensions (SVCCA) or use more samples",
            rx,
            ry,
            p.n - 1,
            rx + ry - (p.n - 1),
        )


@register("cca", resample="subsample")
def _cca_mean(p: Pair, center: bool = True) -> float:
    """Mean canonical correlation (ρ̄ of Raghu et al. 2017). Invariant to invertible
    linear maps of either view."""
    rho = p.canonical_correlations(center)
    _warn_if_trivial(p, p.x.whitener(center).rank, p.y.whitener(center).rank)
    return float(rho.mean())


@register("cca_squared", resample="subsample")
def _cca_squared(p: Pair, center: bool = True) -> float:
    """Mean squared canonical correlation R²_CCA (Kornblith et al. 2019, Table 1):
    ‖Q_xᵀ Q_y‖²_F / min(rank x, rank y).

    ``center=False`` reproduces Kornblith's demo notebook, whose ``cca`` takes the QR of
    uncentred features (its data have mean ≈ 0); CCA proper centres.
    """
    # Σρ² = ‖M‖²_F: no decomposition needed.
    m = p.whitened_cross(center)
    _warn_if_trivial(p, m.shape[0], m.shape[1])
    return float(torch.linalg.matrix_norm(m) ** 2) / min(m.shape)


def _svd_reduce(view: View, variance: float, n_components: int | None) -> Tensor:
    """Whitened top principal directions (D×k): xc·A = the left singular vectors U_k."""
    evals, evecs = view.pca()
    if n_components is not None:
        if not 1 <= n_components <= view.d:
            raise ValueError(f"n_components must be in [1, {view.d}], got {n_components}")
        keep = n_components
    else:
        if not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        # Raghu et al. 2017: keep the fewest directions explaining `variance` of the
        # variance (eigenvalues of the covariance = squared singular values). ReSi
        # (Klabunde et al. 2024, `top_k_pca_comps`) compares the cumulative *fraction*
        # with 0.99 × the *total* variance: when that total exceeds ~1.01 nothing
        # qualifies, np.argmax returns 0 and one component is kept. We follow the paper.
        frac = torch.cumsum(evals, 0) / evals.sum()
        keep = int((frac < variance - 1e-12).sum()) + 1
    positive = int((evals > evals[0] * 1e-12).sum())
    keep = min(keep, positive, view.n - 1)
    return evecs[:, :keep] / evals[:keep].sqrt()


@register("svcca", resample="subsample")
def _svcca(p: Pair, variance: float = 0.99, n_components: int | None = None) -> float:
    """SVCCA (Raghu et al. 2017): SVD-reduce each view to the directions keeping
    ``variance`` of its variance (or ``n_components``), then mean canonical correlation."""
    ax = _svd_reduce(p.x, variance, n_components)
    ay = _svd_reduce(p.y, variance, n_components)
    # The reduced views xc·ax, yc·ay are already orthonormal bases, so their canonical
    # correlations are the singular values of (xc·ax)ᵀ(yc·ay) = axᵀ Cxy ay.
    rho = torch.linalg.svdvals(ax.T @ p.cross_cov() @ ay).clamp(0.0, 1.0)
    _warn_if_trivial(p, ax.shape[1], ay.shape[1])
    return float(rho.mean())


@register("pwcca", resample="subsample")
def _pwcca(p: Pair) -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018, eq. in §2.3).

    Each canonical correlation ρ_i is weighted by α_i ∝ Σ_j |⟨h_i, x_j⟩|, how much of
    the representation's neurons x_j (centred columns) the canonical variate h_i accounts
    for; weights come from the view with the smaller rank, as in the authors' code.
    """
    rx, ry = p.x.whitener().rank, p.y.whitener().rank
    pair = p if rx <= ry else Pair(p.y, p.x)
    rho, dirs = pair.canonical_directions()
    xc = pair.x.centred()
    variates = xc @ dirs  # (N, r), orthonormal columns
    weights = (variates.T @ xc).abs().sum(dim=1)  # (r,)
    _warn_if_trivial(p, rx, ry)
    return float((weights * rho).sum() / weights.sum())


@register("procrustes")
def _procrustes(p: Pair) -> float:
    """Orthogonal Procrustes similarity: ‖xcᵀ yc‖_* / (‖xc‖_F ‖yc‖_F) ∈ [0, 1].

    After centring and scaling to unit Frobenius norm, min_R ‖x − yR‖²_F over orthogonal
    R equals 2 − 2·this (Schönemann 1966; Ding et al. 2021); widths may differ (the
    narrower view is implicitly zero-padded).
    """
    fx, fy = math.sqrt(p.x.spread()), math.sqrt(p.y.spread())  # ‖xc‖_F, ‖yc‖_F
    nuclear = float(torch.linalg.svdvals(p.cross_cov()).sum())
    return nuclear / (fx * fy)


def _rank(values: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), like scipy.stats.rankdata, on any device.

    On CPU the sort runs in numpy, whose SIMD argsort is several times faster than
    torch.sort on the ~N²/2 entries of an RDM.
    """
    if values.device.type == "cpu":
        array = values.numpy()
        order = np.argsort(array)
        sorted_vals = array[order]
        if not (sorted_vals[1:] == sorted_vals[:-1]).any():  # no ties: ranks 1..M
            ranks = np.empty(array.size, dtype=np.float64)
            ranks[order] = np.arange(1, array.size + 1, dtype=np.float64)
            return torch.from_numpy(ranks)
        return torch.from_numpy(scipy.stats.rankdata(array))
    sorted_vals, order = torch.sort(values)
    _, inverse, counts = torch.unique_consecutive(
        sorted_vals, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).to(_DTYPE)
    mean_rank = ends - (counts.to(_DTYPE) - 1) / 2
    ranks = torch.empty_like(values, dtype=_DTYPE)
    ranks[order] = mean_rank[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor, what: str) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(a.norm() * b.norm())
    if denom == 0:
        raise ValueError(f"{what}: one of the vectors is constant")
    return float(a @ b) / denom


def _rdm_upper(view: View, inner: str) -> Tensor:
    """Upper triangle of a representational similarity matrix (monotone in the RDM)."""
    if inner == "euclidean":
        mat = view.sqdist()  # Spearman needs only the order, and both RDMs share it
    elif inner == "cosine":
        mat = view.cos_gram()
    elif inner == "correlation":
        # Pearson correlation between rows from the Gram: (K_ij − D r_i r_j)/sqrt(v_i v_j),
        # r the row means, with the raw Gram K = Kc + a1ᵀ + 1aᵀ + c.
        a, c = view._offsets()
        r = view.x.mean(dim=1)
        u = a + c / 2
        mat = torch.addr(view.gram_c(), r, r, alpha=-view.d)  # one pass each, in place
        mat += u[:, None]
        mat += u[None, :]
        var = mat.diagonal().clamp_min(0)
        if bool((var <= 1e-12 * var.max().clamp_min(1e-300)).any()):
            raise ValueError(f"{view.name} has a constant row: its correlation is undefined")
        inv = 1.0 / var.sqrt()
        mat *= inv[:, None]
        mat *= inv[None, :]
    else:
        raise ValueError(f"inner must be 'correlation', 'cosine' or 'euclidean', got {inner!r}")
    return _upper(mat)


@register("rsa", resample="subsample")
def _rsa(p: Pair, inner: str = "correlation") -> float:
    """RSA (Kriegeskorte et al. 2008): Spearman correlation of the upper triangles of the
    two representational dissimilarity matrices (default: correlation distance, as ReSi)."""
    _need_n(p.x, 3, "RSA")
    a = p.x._cached(("rdm_rank", inner), lambda: _rank(_rdm_upper(p.x, inner)))
    b = p.y._cached(("rdm_rank", inner), lambda: _rank(_rdm_upper(p.y, inner)))
    return _pearson(a, b, "RSA")


# --------------------------------------------------------------------------- neighbours


def _knn_match(p: Pair, k: int) -> Tensor:
    """(N×k×k) bool: match[i, a, b] ⇔ x's a-th neighbour of i is y's b-th neighbour of i."""
    kx, ky = p.x.knn(k), p.y.knn(k)
    return p._cached(("match", k), lambda: kx[:, :, None] == ky[:, None, :])


@register("mutual_knn", resample="subsample")
def _mutual_knn(p: Pair, k: int = 10) -> float:
    """Mutual k-NN (Huh et al. 2024): mean over samples of |N_k^x(i) ∩ N_k^y(i)| / k.
    Chance level k/(N−1)."""
    return float(_knn_match(p, k).sum(dim=(1, 2)).to(_DTYPE).mean()) / k


@register("knn_jaccard", resample="subsample")
def _knn_jaccard(p: Pair, k: int = 10) -> float:
    """k-NN Jaccard similarity (Klabunde et al. 2024, ReSi): mean |∩| / |∪| of the two
    neighbour sets (cosine neighbours, self excluded)."""
    inter = _knn_match(p, k).sum(dim=(1, 2)).to(_DTYPE)
    return float((inter / (2 * k - inter)).mean())


@register("knn_rank", resample="subsample")
def _knn_rank(p: Pair, k: int = 10) -> float:
    """Rank similarity (Wang et al. 2020, as in ReSi, Klabunde et al. 2024).

    For each shared neighbour j of i with ranks r, r′: 2 / ((1 + |r − r′|)(r + r′)),
    summed and divided by Σ_{m=1}^{K_i} 1/m, K_i the number of shared neighbours
    (0 when none are shared); averaged over samples.
    """
    match = _knn_match(p, k).to(_DTYPE)
    r = torch.arange(1, k + 1, dtype=_DTYPE, device=match.device)
    weight = 2.0 / ((1 + (r[:, None] - r[None, :]).abs()) * (r[:, None] + r[None, :]))
    score = (match * weight).sum(dim=(1, 2))
    shared = match.sum(dim=(1, 2)).long()
    harmonic = torch.cat([r.new_zeros(1), torch.cumsum(1.0 / r, 0)])[shared]
    return float(torch.where(shared > 0, score / harmonic.clamp_min(1e-300), 0.0).mean())


@register("cycle_knn", resample="subsample")
def _cycle_knn(p: Pair, k: int = 10) -> float:
    """Cycle k-NN (Huh et al. 2024, platonic-rep ``cycle_knn``): the fraction of samples
    i that appear among the x-neighbours of one of their y-neighbours."""
    kx, ky = p.x.knn(k), p.y.knn(k)
    back = kx[ky]  # (N, k, k): x-neighbours of each y-neighbour of i
    i = torch.arange(p.n, device=back.device)[:, None, None]
    return float((back == i).flatten(1).any(dim=1).to(_DTYPE).mean())


def _points_back(knn: Tensor) -> Tensor:
    """(N×k) bool: is i among the neighbours of its a-th neighbour j = knn[i, a]?"""
    i = torch.arange(knn.shape[0], device=knn.device)[:, None, None]
    return (knn[knn] == i).any(dim=2)


def _masked_hsic(
    idx: Tensor, keep: Tensor | None, kvals: Tensor, lvals: Tensor, transposed: Tensor
) -> float:
    """Unbiased HSIC of the masked kernels A = M∘K, B = M∘L, stored sparsely.

    M is 1 at (i, idx[i, a]) where ``keep``; ``kvals``/``lvals`` hold K and L there and
    ``transposed`` says whether (idx[i, a], i) is in M too. The terms of
    :func:`_hsic_unbiased` then cost O(N·k): tr(AB) = Σ A_ij B_ji needs B_ji = L_ij
    (symmetric L) where the transposed entry exists; 1ᵀAB1 = (Aᵀ1)·(B1).
    """
    n = idx.shape[0]
    a = kvals if keep is None else torch.where(keep, kvals, 0.0)
    b = lvals if keep is None else torch.where(keep, lvals, 0.0)
    trace = float((a * b * transposed).sum())
    colsum_a = torch.zeros(n, dtype=a.dtype, device=a.device).index_add_(
        0, idx.reshape(-1), a.reshape(-1)
    )
    cross = float(colsum_a @ b.sum(dim=1))
    sums = float(a.sum()) * float(b.sum()) / ((n - 1) * (n - 2))
    return (trace + sums - 2.0 * cross / (n - 2)) / (n * (n - 3))


@register("cknna", resample="subsample")
def _cknna(p: Pair, k: int = 10) -> float:
    """CKNNA (Huh et al. 2024): CKA with the unbiased HSIC restricted to pairs (i, j) where
    j is a k-nearest neighbour of i in *both* views; cosine kernels, self excluded.

    Follows platonic-rep ``cknna`` (kernels not centred before masking, the masked
    kernels are not symmetric) except for its ``+1e-6`` in the denominator, which we
    drop (it moves values by ~1e-5 on unit-norm features). The masked kernels have k
    entries per row, so they are kept sparse: O(N·k) instead of dense N×N masks.
    """
    _need_n(p.x, 4, "CKNNA (unbiased HSIC)")
    kx, ky = p.x.knn(k), p.y.knn(k)
    cx, cy = p.x.cos_gram(), p.y.cos_gram()
    kxx, kxy = cx.gather(1, kx), cy.gather(1, kx)  # K and L at (i, x-neighbours of i)
    lyy = cy.gather(1, ky)
    in_x, in_y = _points_back(kx), _points_back(ky)  # is i a neighbour of its neighbour?
    both = _knn_match(p, k).any(dim=2)  # x-neighbour a of i is also a y-neighbour of i
    in_y_at_kx = (ky[kx] == torch.arange(p.n, device=kx.device)[:, None, None]).any(dim=2)
    kl = _masked_hsic(kx, both, kxx, kxy, in_x & in_y_at_kx)
    sx = _masked_hsic(kx, None, kxx, kxx, in_x)
    sy = _masked_hsic(ky, None, lyy, lyy, in_y)
    if sx <= 0 or sy <= 0:
        raise ValueError(f"CKNNA normaliser not positive (HSIC_x={sx:.3g}, HSIC_y={sy:.3g})")
    return kl / math.sqrt(sx * sy)


# --------------------------------------------------------------------------- geometry


@register("cosine", equal_dims=True)
def _paired_cosine(p: Pair) -> float:
    """Mean cosine similarity of paired rows, cos(x_i, y_i); needs equal widths.

    Beware: after a shared projection, unrelated vectors can have high cosine; read it
    against a permutation null.
    """
    if p.x.d != p.y.d:
        raise ValueError(f"paired cosine needs equal widths, got {p.x.d} and {p.y.d}")
    dots = (p.x.x * p.y.x).sum(dim=1)
    return float((dots / (p.x.row_norms() * p.y.row_norms())).mean())


def _pca_project(view: View, dim: int) -> Tensor:
    _, evecs = view.pca()
    return view.centred() @ evecs[:, :dim]


@register("wasserstein", higher_is_better=False, best=0.0, pairing_invariant=True)
def _wasserstein(p: Pair, normalize: bool = False, num_iter_max: int = 10_000_000) -> float:
    """2-Wasserstein distance between the two point clouds (uniform weights, exact OT
    with POT's ``ot.emd2``); 0 for identical clouds, lower is more aligned.

    Widths must match, or both views are projected on their own top-min(D1, D2)
    principal components (centred). That projection is a documented compromise: the two
    PCA bases are not aligned, so prefer equal widths. ``normalize`` L2-normalises rows
    first. The pairing of rows is ignored by construction.
    """
    import ot  # POT; imported here as it is only needed for this measure

    x, y = p.x.x, p.y.x
    if p.x.d != p.y.d:
        dim = min(p.x.d, p.y.d)
        log.warning("wasserstein: widths %d != %d, projecting both on %d PCs", p.x.d, p.y.d, dim)
        x, y = _pca_project(p.x, dim), _pca_project(p.y, dim)
    if normalize:
        x = x / p.x.row_norms()[:, None]
        y = y / p.y.row_norms()[:, None]
    cost = torch.cdist(x, y).pow(2).cpu().numpy()
    weights = np.full(p.n, 1.0 / p.n)
    w2 = ot.emd2(weights, weights, cost, numItermax=num_iter_max)
    return math.sqrt(max(float(w2), 0.0))


# --------------------------------------------------------------------------- tokens


def _check_tokens(t: Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 3:
        raise ValueError(f"{name} must be a B×T×D tensor, got {getattr(t, 'shape', t)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def _mask_or_ones(mask: Tensor | None, t: Tensor, name: str) -> Tensor:
    if mask is None:
        return torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
    if tuple(mask.shape) != tuple(t.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(t.shape[:2])}")
    mask = mask.to(device=t.device).bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: some sample has no real tokens")
    return mask


def token_maxsim(
    text: Tensor,
    image: Tensor,
    text_mask: Tensor | None = None,
    image_mask: Tensor | None = None,
    direction: str = "text_to_patch",
) -> float:
    """Token-level max-similarity: each real text token's best cosine over the same
    sample's real patches (``text_to_patch``), or each patch's best over tokens
    (``patch_to_text``), averaged over all real query tokens of the batch.

    ``text``: B×T×D, ``image``: B×P×D, masks B×T / B×P (1 = real; default all real).
    """
    _check_tokens(text, "text")
    _check_tokens(image, "image")
    if text.shape[0] != image.shape[0] or text.shape[2] != image.shape[2]:
        raise ValueError(f"text {tuple(text.shape)} and image {tuple(image.shape)} need equal B, D")
    tm = _mask_or_ones(text_mask, text, "text_mask")
    im = _mask_or_ones(image_mask, image, "image_mask")
    if direction == "patch_to_text":
        text, image, tm, im = image, text, im, tm
    elif direction != "text_to_patch":
        raise ValueError(f"direction must be 'text_to_patch' or 'patch_to_text', got {direction!r}")
    q = torch.nn.functional.normalize(text.to(_DTYPE), dim=-1)
    k = torch.nn.functional.normalize(image.to(_DTYPE), dim=-1)
    sims = torch.bmm(q, k.transpose(1, 2))  # (B, Tq, Tk)
    sims = sims.masked_fill(~im[:, None, :], -math.inf)
    best = sims.max(dim=2).values  # (B, Tq)
    return float(best[tm].mean())


def _maxsim_t2p(text: Tensor, image: Tensor, text_mask=None, image_mask=None) -> float:
    return token_maxsim(text, image, text_mask, image_mask, "text_to_patch")


def _maxsim_p2t(text: Tensor, image: Tensor, text_mask=None, image_mask=None) -> float:
    return token_maxsim(text, image, text_mask, image_mask, "patch_to_text")


#: Token-level measures: ``fn(text B×T×D, image B×P×D, text_mask, image_mask) -> float``.
TOKEN_MEASURES: dict[str, Callable[..., float]] = {
    "maxsim_text_to_patch": _maxsim_t2p,
    "maxsim_patch_to_text": _maxsim_p2t,
}

# Public callables (each is a Measure: ``cka_linear(x, y)``).
cka_linear = MEASURES["cka_linear"]
cka_unbiased = MEASURES["cka_unbiased"]
cka_rbf = MEASURES["cka_rbf"]
cka_minibatch = MEASURES["cka_minibatch"]
cca = MEASURES["cca"]
cca_squared = MEASURES["cca_squared"]
svcca = MEASURES["svcca"]
pwcca = MEASURES["pwcca"]
procrustes = MEASURES["procrustes"]
rsa = MEASURES["rsa"]
mutual_knn = MEASURES["mutual_knn"]
knn_jaccard = MEASURES["knn_jaccard"]
knn_rank = MEASURES["knn_rank"]
cycle_knn = MEASURES["cycle_knn"]
cknna = MEASURES["cknna"]
paired_cosine = MEASURES["cosine"]
wasserstein = MEASURES["wasserstein"]

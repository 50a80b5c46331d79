"""Views and pairs: one representation with its cached derived quantities, and two paired.

A :class:`View` caches what one representation needs (Gram matrix, centred Gram, cosine
Gram, k-NN lists, feature covariance and its factors) and a :class:`Pair` caches cross
terms, so several measures — or a layer×layer grid that reuses the same views — compute
each Gram matrix and neighbour list once. Both validate their input: degenerate data
raises a ``ValueError`` that names the problem instead of becoming a silent NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vilalign.analysis.measures.linalg import (
    DTYPE,
    HSIC_MIN_N,
    Tensor,
    double_centre,
    frobenius_dot,
    hsic_unbiased_centred,
    self_product,
)

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


def need_n(view: View, min_n: int, what: str) -> None:
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


class View:
    """One representation (N×D) with lazily cached derived quantities.

    Build one per (layer, stream) and pass it to several measures or several pairs: the
    Gram matrix, neighbour lists and covariance factors are then computed once.
    """

    def __init__(self, x: Tensor, name: str = "x") -> None:
        _check_matrix(x, name)
        self.name = name
        self.x = x.detach().to(DTYPE)
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
            return sliced if same_set else double_centre(sliced)
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
        return self._cached("gram_c", lambda: self_product(self.centred(), outer=True))

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
            value = float(frobenius_dot(xc, xc))
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
            return float(frobenius_dot(kc, kc))

        return self._cached("gram_c_dot", make)

    def gram_c_norm(self) -> float:
        """Frobenius norm of the centred Gram; raises when every row is the same."""
        return math.sqrt(self.gram_c_dot())

    def hsic_u_self(self) -> float:
        """Unbiased HSIC(K, K); must be positive for CKA to be defined."""

        def make() -> float:
            need_n(self, HSIC_MIN_N, "the unbiased HSIC estimator")
            kc = self.gram_c()
            value = hsic_unbiased_centred(kc, kc, self.gram_c_dot())
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
        return self._cached(key, lambda: self_product(self.centred(center), outer=False))

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
        return self._cached(
            "gram_c_dot", lambda: float(frobenius_dot(self.x.gram_c(), self.y.gram_c()))
        )

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

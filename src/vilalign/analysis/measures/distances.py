"""Distances and other geometry: RSA, paired cosine, the 2-Wasserstein distance.

RSA compares the two views' dissimilarity matrices by rank; paired cosine compares
matched rows directly; Wasserstein compares the two point clouds, ignoring the pairing.

Scale: paired cosine is O(N·D) in blocks. RSA (a rank correlation of all N(N−1)/2
dissimilarities) and Wasserstein (exact optimal transport on an N×N cost matrix) have no
exact form whose memory grows linearly in N; above the N whose dense form fits the
memory budget they are computed on a seeded subsample of rows (:meth:`Pair.subsample`),
logged and reported as the result's ``rows``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import scipy.stats
import torch

from vilalign.analysis.measures import budget
from vilalign.analysis.measures.linalg import DTYPE, Tensor, upper_triangle
from vilalign.analysis.measures.registry import OFFSET_BIAS, register
from vilalign.analysis.measures.views import Pair, View, need_n

log = logging.getLogger(__name__)

#: A rank correlation of the N(N-1)/2 dissimilarities needs at least 3 of them to vary.
_RSA_MIN_N = 3
#: Bytes per N² of each dense form for a pair: RSA holds per view an N×N similarity, its
#: upper triangle, the argsort and the ranks; Wasserstein the N×N cost matrix (and its
#: float64 copy), the transport plan and POT's network-simplex arrays.
_RSA_BYTES, _WASSERSTEIN_BYTES = 64, 48


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
    ends = torch.cumsum(counts, 0).to(DTYPE)
    mean_rank = ends - (counts.to(DTYPE) - 1) / 2
    ranks = torch.empty_like(values, dtype=DTYPE)
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
    return upper_triangle(mat)


def _rsa_value(p: Pair, inner: str) -> float:
    a = p.x._cached(("rdm_rank", inner), lambda: _rank(_rdm_upper(p.x, inner)))
    b = p.y._cached(("rdm_rank", inner), lambda: _rank(_rdm_upper(p.y, inner)))
    return _pearson(a, b, "RSA")


def _rsa_pair(p: Pair, inner: str) -> Pair:
    """The pair RSA ranks: all rows while their dense form fits the budget, else a subsample."""
    need_n(p.x, _RSA_MIN_N, "RSA")
    if inner not in ("correlation", "cosine", "euclidean"):
        raise ValueError(f"inner must be 'correlation', 'cosine' or 'euclidean', got {inner!r}")
    return p.subsample("rsa", budget.largest_dense_n(_RSA_BYTES))


def _rsa_null(x: View, y: View, perms: Iterable[Tensor], inner: str = "correlation") -> list[float]:
    """RSA of many permutations, each re-indexing y's ranks (O(N²), no sort).

    Subsampled (N over the budget), the null is that of the subsampled statistic: each
    permutation π pairs the kept rows of x with the kept rows of y in π's relative order
    on them (a uniform permutation of the subsample), so y's ranks are re-indexed too
    instead of re-sorted for a new set of rows.
    """
    pair = Pair(x, y)
    kept = _rsa_pair(pair, inner)
    if kept is pair:
        return [_rsa_value(Pair(x, y.permuted(perm)), inner) for perm in perms]
    rows = kept.x._parent[1]  # the subsample's positions (see Pair.subsample)
    return [
        _rsa_value(Pair(kept.x, kept.y.permuted(perm.to(rows.device)[rows].argsort())), inner)
        for perm in perms
    ]


@register("rsa", resample="subsample", min_n=_RSA_MIN_N, null=_rsa_null)
def rsa(p: Pair, inner: str = "correlation") -> float:
    """RSA (Kriegeskorte et al. 2008): Spearman correlation of the upper triangles of the
    two representational dissimilarity matrices (default: correlation distance, as ReSi)."""
    return _rsa_value(_rsa_pair(p, inner), inner)


@register("cosine", equal_dims=True, bias=OFFSET_BIAS)
def paired_cosine(p: Pair) -> float:
    """Mean cosine similarity of paired rows, cos(x_i, y_i); needs equal widths.

    Beware: after a shared projection, unrelated vectors can have high cosine; read it
    against a permutation null.
    """
    if p.x.d != p.y.d:
        raise ValueError(f"paired cosine needs equal widths, got {p.x.d} and {p.y.d}")
    norms = p.x.row_norms() * p.y.row_norms()
    if "x" in p.x._cache and "x" in p.y._cache:
        dots = (p.x.x * p.y.x).sum(dim=1)
        return float((dots / norms).mean())
    total = 0.0
    for start, stop in p.x.blocks(p.x.d * 8 * 3, f"paired cosine with {p.y.name}"):
        dots = (p.x.rows(start, stop) * p.y.rows(start, stop)).sum(dim=1)
        total += float((dots / norms[start:stop]).sum())
    return total / p.n


def _pca_project(view: View, dim: int) -> Tensor:
    """Centred rows on the view's top ``dim`` principal axes, each with its canonical sign."""
    return view.centred() @ view.axes(dim)


@register("wasserstein", higher_is_better=False, best=0.0, pairing_invariant=True)
def wasserstein(p: Pair, normalize: bool = False, num_iter_max: int = 10_000_000) -> float:
    """2-Wasserstein distance between the two point clouds (uniform weights, exact OT
    with POT's ``ot.emd2``); 0 for identical clouds, lower is more aligned.

    Widths must match, or both views are projected on their own top-min(D1, D2)
    principal components (centred), each axis with a canonical sign (``View.axes``) so
    the value does not depend on the eigensolver's sign choices. That projection is a
    documented compromise: the two PCA bases are not aligned, so prefer equal widths.
    ``normalize`` L2-normalises rows first. The pairing of rows is ignored by
    construction. Above the N whose cost matrix fits the memory budget: a seeded
    subsample of rows (reported).
    """
    import ot  # POT; imported here as it is only needed for this measure

    p = p.subsample("wasserstein", budget.largest_dense_n(_WASSERSTEIN_BYTES))
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

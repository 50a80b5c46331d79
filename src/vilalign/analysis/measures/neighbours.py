"""Neighbourhood measures: mutual k-NN, k-NN Jaccard, rank similarity, cycle k-NN, CKNNA.

Each compares the views' cosine k-nearest-neighbour lists (self excluded), cached per
view and k, so all of them on one pair take one top-k per view: from the dense cosine
Gram while it fits the memory budget, else from certified blocked float32 products
(:mod:`.topk`, the same sets in O(N·k) memory). Everything after the lists is O(N·k²)
(CKNNA: O(N·k·D)), so a permutation, which only renames the lists, costs that too. A
parameter ``k`` is the number of neighbours: the registry derives from it that N > k is
needed.
"""

from __future__ import annotations

import math

import torch

from vilalign.analysis.measures.linalg import DTYPE, HSIC_MIN_N, Tensor
from vilalign.analysis.measures.registry import register
from vilalign.analysis.measures.views import Pair, need_n


def _knn_match(p: Pair, k: int) -> Tensor:
    """(N×k×k) bool: match[i, a, b] ⇔ x's a-th neighbour of i is y's b-th neighbour of i."""
    kx, ky = p.x.knn(k), p.y.knn(k)
    return p._cached(("match", k), lambda: kx[:, :, None] == ky[:, None, :])


@register("mutual_knn", resample="subsample", blocks_over_n=True)
def mutual_knn(p: Pair, k: int = 10) -> float:
    """Mutual k-NN (Huh et al. 2024): mean over samples of |N_k^x(i) ∩ N_k^y(i)| / k.
    Chance level k/(N−1)."""
    return float(_knn_match(p, k).sum(dim=(1, 2)).to(DTYPE).mean()) / k


@register("knn_jaccard", resample="subsample", blocks_over_n=True)
def knn_jaccard(p: Pair, k: int = 10) -> float:
    """k-NN Jaccard similarity (Klabunde et al. 2024, ReSi): mean |∩| / |∪| of the two
    neighbour sets (cosine neighbours, self excluded)."""
    inter = _knn_match(p, k).sum(dim=(1, 2)).to(DTYPE)
    return float((inter / (2 * k - inter)).mean())


@register("knn_rank", resample="subsample", blocks_over_n=True)
def knn_rank(p: Pair, k: int = 10) -> float:
    """Rank similarity (Wang et al. 2020, as in ReSi, Klabunde et al. 2024).

    For each shared neighbour j of i with ranks r, r′: 2 / ((1 + |r − r′|)(r + r′)),
    summed and divided by Σ_{m=1}^{K_i} 1/m, K_i the number of shared neighbours
    (0 when none are shared); averaged over samples.
    """
    match = _knn_match(p, k).to(DTYPE)
    r = torch.arange(1, k + 1, dtype=DTYPE, device=match.device)
    weight = 2.0 / ((1 + (r[:, None] - r[None, :]).abs()) * (r[:, None] + r[None, :]))
    score = (match * weight).sum(dim=(1, 2))
    shared = match.sum(dim=(1, 2)).long()
    harmonic = torch.cat([r.new_zeros(1), torch.cumsum(1.0 / r, 0)])[shared]
    return float(torch.where(shared > 0, score / harmonic.clamp_min(1e-300), 0.0).mean())


@register("cycle_knn", resample="subsample", interval="subsample_large", blocks_over_n=True)
def cycle_knn(p: Pair, k: int = 10) -> float:
    """Cycle k-NN (Huh et al. 2024, platonic-rep ``cycle_knn``): the fraction of samples
    i that appear among the x-neighbours of one of their y-neighbours."""
    kx, ky = p.x.knn(k), p.y.knn(k)
    back = kx[ky]  # (N, k, k): x-neighbours of each y-neighbour of i
    i = torch.arange(p.n, device=back.device)[:, None, None]
    return float((back == i).flatten(1).any(dim=1).to(DTYPE).mean())


def _points_back(knn: Tensor) -> Tensor:
    """(N×k) bool: is i among the neighbours of its a-th neighbour j = knn[i, a]?"""
    i = torch.arange(knn.shape[0], device=knn.device)[:, None, None]
    return (knn[knn] == i).any(dim=2)


def _masked_hsic(
    idx: Tensor, keep: Tensor | None, kvals: Tensor, lvals: Tensor, transposed: Tensor
) -> float:
    """Unbiased HSIC of the masked kernels A = M∘K, B = M∘L, stored sparsely.

    M is 1 at (i, idx[i, a]) where ``keep``; ``kvals``/``lvals`` hold K and L there and
    ``transposed`` says whether (idx[i, a], i) is in M too. The terms of the unbiased
    HSIC (see :func:`~vilalign.analysis.measures.linalg.hsic_unbiased_centred`) then cost
    O(N·k): tr(AB) = Σ A_ij B_ji needs B_ji = L_ij (symmetric L) where the transposed
    entry exists; 1ᵀAB1 = (Aᵀ1)·(B1).
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


@register("cknna", resample="subsample", min_n=HSIC_MIN_N, blocks_over_n=True)
def cknna(p: Pair, k: int = 10) -> float:
    """CKNNA (Huh et al. 2024): CKA with the unbiased HSIC restricted to pairs (i, j) where
    j is a k-nearest neighbour of i in *both* views; cosine kernels, self excluded.

    Follows platonic-rep ``cknna`` (kernels not centred before masking, the masked
    kernels are not symmetric) except for its ``+1e-6`` in the denominator, which we
    drop (it moves values by ~1e-5 on unit-norm features). The masked kernels have k
    entries per row, so they are kept sparse: O(N·k) instead of dense N×N masks.
    """
    need_n(p.x, HSIC_MIN_N, "CKNNA (unbiased HSIC)")
    kx, ky = p.x.knn(k), p.y.knn(k)
    kxx, kxy = p.x.cos_at(kx), p.y.cos_at(kx)  # K and L at (i, x-neighbours of i)
    lyy = p.y.cos_at(ky)
    in_x, in_y = _points_back(kx), _points_back(ky)  # is i a neighbour of its neighbour?
    both = _knn_match(p, k).any(dim=2)  # x-neighbour a of i is also a y-neighbour of i
    in_y_at_kx = (ky[kx] == torch.arange(p.n, device=kx.device)[:, None, None]).any(dim=2)
    kl = _masked_hsic(kx, both, kxx, kxy, in_x & in_y_at_kx)
    sx = _masked_hsic(kx, None, kxx, kxx, in_x)
    sy = _masked_hsic(ky, None, lyy, lyy, in_y)
    if sx <= 0 or sy <= 0:
        raise ValueError(f"CKNNA normaliser not positive (HSIC_x={sx:.3g}, HSIC_y={sy:.3g})")
    return kl / math.sqrt(sx * sy)

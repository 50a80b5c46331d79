"""The CKA family: linear (biased and unbiased HSIC), RBF and minibatch CKA.

Centred kernel alignment (Kornblith et al. 2019) compares the two views' Gram matrices;
every form here reads the views' cached centred Gram, so several CKA variants of one
pair cost one N×N product per view.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vilalign.analysis.measures.linalg import (
    DTYPE,
    HSIC_MIN_N,
    Tensor,
    frobenius_dot,
    hsic_unbiased_centred,
    upper_triangle,
)
from vilalign.analysis.measures.registry import GRAM_BIAS, register
from vilalign.analysis.measures.views import Pair, View, need_n


@register("cka_linear", interval="subsample_bc", bias=GRAM_BIAS)
def cka_linear(p: Pair) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. 4): ⟨Kc, Lc⟩_F / (‖Kc‖_F ‖Lc‖_F), the
    biased-HSIC estimator (its 1/(n-1)² cancels); equals the RV coefficient of the centred
    data. Biased upward for N small relative to D."""
    return p.gram_c_dot() / (p.x.gram_c_norm() * p.y.gram_c_norm())


@register("cka_unbiased", resample="subsample", min_n=HSIC_MIN_N)
def cka_unbiased(p: Pair) -> float:
    """Debiased linear CKA: unbiased HSIC (Song et al. 2012) in the numerator *and* the
    normalisation, as in Nguyen et al. 2021 and Kornblith's demo (``debiased=True``).

    Some libraries divide the unbiased numerator by biased self-HSICs; that is not the
    estimator of the paper. Bootstraps by subsampling: a duplicated row puts a diagonal
    term back into the off-diagonal sum this estimator was built to exclude.
    """
    need_n(p.x, HSIC_MIN_N, "the unbiased HSIC estimator")
    kxy = hsic_unbiased_centred(p.x.gram_c(), p.y.gram_c(), p.gram_c_dot())
    return kxy / math.sqrt(p.x.hsic_u_self() * p.y.hsic_u_self())


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
    found = dict(zip(upper_ranks, _kth_smallest(upper_triangle(sq), upper_ranks), strict=True))
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
        normsq = float(frobenius_dot(k, k)) - 2.0 / n * float(rowsum @ rowsum) + total**2 / n**2
        if normsq <= 1e-24 * n * n:
            raise ValueError(f"{view.name}: RBF Gram matrix is constant")
        return k, rowsum, total, normsq

    return view._cached(("rbf", threshold), make)


@register("cka_rbf", interval="subsample_bc", bias=GRAM_BIAS)
def cka_rbf(p: Pair, threshold: float = 1.0) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019), bandwidth σ = ``threshold`` × median
    pairwise distance; ⟨HKH, HLH⟩ = ⟨K, L⟩ − 2/n (K1)·(L1) + (1ᵀK1)(1ᵀL1)/n²."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    k, rk, tk, nk = _rbf_kernel(p.x, threshold)
    l, rl, tl, nl = _rbf_kernel(p.y, threshold)
    n = p.n
    cross = float(frobenius_dot(k, l)) - 2.0 / n * float(rk @ rl) + tk * tl / n**2
    return cross / math.sqrt(nk * nl)


class MinibatchCKA:
    """Linear CKA accumulated over minibatches (Nguyen, Raghu & Kornblith 2021, ICLR).

    CKA_mb = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b)),
    with HSIC₁ the unbiased estimator, which keeps the average unbiased whatever the
    batch size. Memory is one batch's Gram matrices, so N can be arbitrarily large.
    """

    def __init__(self) -> None:
        self._sums = torch.zeros(3, dtype=DTYPE)
        self.batches = 0

    def update(self, x: Tensor | View, y: Tensor | View) -> None:
        """Add one minibatch of paired rows (needs at least 4 rows)."""
        pair = Pair(x, y)
        need_n(pair.x, HSIC_MIN_N, "a minibatch of the unbiased HSIC estimator")
        kc, lc = pair.x.gram_c(), pair.y.gram_c()
        terms = torch.tensor(
            [
                hsic_unbiased_centred(kc, lc, pair.gram_c_dot()),
                hsic_unbiased_centred(kc, kc, pair.x.gram_c_dot()),
                hsic_unbiased_centred(lc, lc, pair.y.gram_c_dot()),
            ],
            dtype=DTYPE,
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


@register("cka_minibatch", resample="subsample", min_n=HSIC_MIN_N)
def cka_minibatch(p: Pair, batch_size: int = 256) -> float:
    """Minibatch linear CKA with the unbiased HSIC (Nguyen et al. 2021); see MinibatchCKA."""
    return minibatch_cka(p.x, p.y, batch_size=batch_size)

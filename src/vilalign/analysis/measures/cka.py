"""The CKA family: linear (biased and unbiased HSIC), RBF and minibatch CKA.

Centred kernel alignment (Kornblith et al. 2019) compares the two views' Gram matrices.
The linear forms need only ⟨Kc, Lc⟩_F = ‖xcᵀyc‖²_F, ‖Kc‖²_F and the diagonals of the
centred Grams, so each runs in whichever space is cheaper for its N and D (the Grams,
N²·D work and N² memory, shared with the other dense measures; or the covariances, N·D²
work and D² memory); RBF CKA is exact in both its dense form and a blocked one (O(N·block)
memory, with an exact blocked median).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from vilalign.analysis.measures import budget
from vilalign.analysis.measures.linalg import (
    DTYPE,
    HSIC_MIN_N,
    Tensor,
    frobenius_dot,
    hsic_unbiased,
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
    kxy = hsic_unbiased(p.gram_c_dot(), p.x.diag_c(), p.y.diag_c())
    return kxy / math.sqrt(p.x.hsic_u_self() * p.y.hsic_u_self())


def _kth_smallest(values: Tensor, ranks: list[int]) -> list[float]:
    """Values at 1-indexed ``ranks`` of ``values`` sorted ascending (one numpy partition on
    CPU, ``kthvalue`` elsewhere)."""
    if values.device.type == "cpu":
        part = np.partition(values.numpy(), [r - 1 for r in ranks])
        return [float(part[r - 1]) for r in ranks]
    return [float(torch.kthvalue(values, r).values) for r in ranks]


def _median_of_distances(n: int, select: Callable[[list[int]], list[float]]) -> float:
    """numpy's median of a whole N×N distance matrix (zero diagonal), from its upper half.

    Kornblith et al.'s ``gram_rbf`` takes ``np.median`` over the full matrix, diagonal
    zeros included (the mean of the two middle values). Sorted, that matrix is N zeros
    followed by every upper value twice, so the value at rank p > N is the upper value at
    rank ⌈(p − N)/2⌉: ``select`` returns the upper values at 1-indexed ascending ranks.
    """
    total = n * n
    middle = sorted({(total + 1) // 2, total // 2 + 1})  # one rank when N² is odd
    # A rank p <= N falls on the diagonal zeros; otherwise on upper rank ⌈(p − N)/2⌉.
    upper_ranks = sorted({(p - n + 1) // 2 for p in middle if p > n})
    found = dict(zip(upper_ranks, select(upper_ranks), strict=True))
    values = [found[(p - n + 1) // 2] if p > n else 0.0 for p in middle]
    return sum(values) / len(values)


def _median_distance(sq: Tensor) -> float:
    """The median of a dense N×N squared-distance matrix (two selections on its upper half)."""
    return _median_of_distances(sq.shape[0], lambda r: _kth_smallest(upper_triangle(sq), r))


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
        normsq = _centred_norm(float(frobenius_dot(k, k)), rowsum, rowsum, total, total, n)
        if normsq <= 1e-24 * n * n:
            raise ValueError(f"{view.name}: RBF Gram matrix is constant")
        return k, rowsum, total, normsq

    return view._cached(("rbf", threshold), make)


def _centred_norm(dot: float, rk: Tensor, rl: Tensor, tk: float, tl: float, n: int) -> float:
    """⟨HKH, HLH⟩ = ⟨K, L⟩ − 2/n (K1)·(L1) + (1ᵀK1)(1ᵀL1)/n², from row sums and totals."""
    return dot - 2.0 / n * float(rk @ rl) + tk * tl / n**2


def _rbf_dense(p: Pair, threshold: float) -> bool:
    """The dense form while both kernels fit (it is cheaper), or when they are cached."""
    views = (p.x, p.y)
    cached = all(v.has(("rbf", threshold)) or v.has("sqdist") for v in views)
    n = p.n
    dense = sum(0 if v.has("sqdist") else n * n * v.d / 2 for v in views) + n * n
    return budget.use_dense(cached, budget.dense_fits(n), dense, n * n * (p.x.d + p.y.d))


def _sq_rows(view: View, start: int, stop: int, first: int = 0) -> Tensor:
    """Squared distances (B × (N − first)) of rows start:stop to rows first:N, from centred
    rows as the dense form does (‖a‖² + ‖b‖² − 2a·b, clamped at 0; 0 to itself)."""
    queries, norms = view.centred_rows(start, stop), view.diag_c()
    sq = torch.empty(stop - start, view.n - first, dtype=DTYPE, device=queries.device)
    row_bytes = (view.d + stop - start) * 8 * 2
    for a, b in view.blocks(row_bytes, "distances", share=0.125):
        if b > first:
            a = max(a, first)
            out = sq[:, a - first : b - first]
            torch.add(norms[start:stop, None], norms[None, a:b], out=out)
            out.sub_(queries @ view.centred_rows(a, b).T, alpha=2.0)
    sq.clamp_min_(0.0)
    own = torch.arange(start, stop, device=sq.device)
    inside = own >= first
    sq[own[inside] - start, own[inside] - first] = 0.0
    return sq


def _median_blocked(view: View) -> float:
    """The dense form's median of squared distances, selected exactly block by block."""
    return view._cached(
        "sqdist_median", lambda: _median_of_distances(view.n, lambda r: _select_upper(view, r))
    )


def _bracket(view: View, ranks: list[int], width: float) -> tuple[float, float]:
    """Values that bracket the upper-triangle ranks, from a seeded sample of pairs."""
    n, m = view.n, view.n * (view.n - 1) // 2
    # Enough pairs that the bracket holds ~1/16 of the budget of values (or every pair).
    size = int(min(m, max(100_000, (768 * m / budget.budget_bytes()) ** 2)))
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, n, (size,), generator=g)
    j = torch.randint(0, n - 1, (size,), generator=g)
    j = j + (j >= i)  # any other row
    sample = torch.empty(size, dtype=DTYPE)
    step = budget.block_rows(view.d * 8 * 4, size, f"{view.name}: distance sample")
    for a in range(0, size, step):
        diff = view.take(i[a : a + step]) - view.take(j[a : a + step])
        sample[a : a + step] = (diff * diff).sum(dim=1).cpu()
    half = width * 6 * math.sqrt(0.25 / size) + 1 / size
    low_q, high_q = min(ranks) / m - half, max(ranks) / m + half
    sample = sample.sort().values
    low = float(sample[int(low_q * size)]) if low_q > 0 else -math.inf
    high = float(sample[min(size - 1, math.ceil(high_q * size))]) if high_q < 1 else math.inf
    return low, high


def _select_upper(view: View, ranks: list[int]) -> list[float]:
    """Upper-triangle squared distances at 1-indexed ascending ``ranks``, exactly: count
    the values below a sampled bracket, keep those inside it, select among them."""
    width = 1.0
    for _ in range(4):
        low, high = _bracket(view, ranks, width)
        below, inside = 0, []
        for start, stop in view.blocks(view.n * 8 * 3, "distance median"):
            sq = _sq_rows(view, start, stop, first=start)
            col = torch.arange(start, view.n, device=sq.device)
            upper = col[None, :] > torch.arange(start, stop, device=sq.device)[:, None]
            below += int(((sq < low) & upper).sum())
            inside.append(sq[(sq >= low) & (sq <= high) & upper].cpu())
        values = torch.cat(inside)
        if all(below < r <= below + values.numel() for r in ranks):
            return _kth_smallest(values, [r - below for r in ranks])
        width *= 4  # the sample missed (probability ~1e-9): a wider bracket, once more
    raise RuntimeError(f"{view.name}: could not bracket the median distance")


def _rbf_blocked(p: Pair, threshold: float) -> float:
    """RBF CKA from kernel blocks (B×N at a time): ⟨K, L⟩, ‖K‖², ‖L‖² and row sums."""
    n = p.n
    scales = []
    for view in (p.x, p.y):
        sq_median = _median_blocked(view)
        if sq_median <= 0:
            raise ValueError(f"{view.name}: median pairwise distance is 0 (constant rows)")
        scales.append(-1.0 / (2 * threshold**2 * sq_median))
    dots = torch.zeros(3, dtype=DTYPE, device=p.x.device)
    rk = torch.empty(n, dtype=DTYPE, device=p.x.device)
    rl = torch.empty_like(rk)
    blocks = list(p.x.blocks(n * 8 * 4, f"RBF kernels with {p.y.name}"))
    work = float(n) * n * (p.x.d + p.y.d)
    with budget.progress(len(blocks), work, f"cka_rbf {p.x.name}") as bar:
        for start, stop in blocks:
            k = _sq_rows(p.x, start, stop).mul_(scales[0]).exp_()
            l = _sq_rows(p.y, start, stop).mul_(scales[1]).exp_()
            dots += torch.stack([frobenius_dot(k, l), frobenius_dot(k, k), frobenius_dot(l, l)])
            rk[start:stop], rl[start:stop] = k.sum(dim=1), l.sum(dim=1)
            bar.update(1)
    tk, tl = float(rk.sum()), float(rl.sum())
    kl, kk, ll = (float(v) for v in dots)
    nk, nl = _centred_norm(kk, rk, rk, tk, tk, n), _centred_norm(ll, rl, rl, tl, tl, n)
    for view, norm in ((p.x, nk), (p.y, nl)):
        if norm <= 1e-24 * n * n:
            raise ValueError(f"{view.name}: RBF Gram matrix is constant")
    return _centred_norm(kl, rk, rl, tk, tl, n) / math.sqrt(nk * nl)


@register("cka_rbf", interval="subsample_bc", bias=GRAM_BIAS, blocks_over_n=True)
def cka_rbf(p: Pair, threshold: float = 1.0) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019), bandwidth σ = ``threshold`` × median
    pairwise distance; ⟨HKH, HLH⟩ = ⟨K, L⟩ − 2/n (K1)·(L1) + (1ᵀK1)(1ᵀL1)/n².

    Dense kernels while they fit the memory budget; above it the same sums from B×N
    kernel blocks (exact, O(N²·D) time, O(B·N) memory), the median by exact selection.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if not _rbf_dense(p, threshold):
        return _rbf_blocked(p, threshold)
    k, rk, tk, nk = _rbf_kernel(p.x, threshold)
    l, rl, tl, nl = _rbf_kernel(p.y, threshold)
    cross = _centred_norm(float(frobenius_dot(k, l)), rk, rl, tk, tl, p.n)
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
        dot = pair.gram_c_dot()  # Gram or feature form, whichever is cheaper for the batch
        dk, dl = pair.x.diag_c(), pair.y.diag_c()
        terms = torch.tensor(
            [
                hsic_unbiased(dot, dk, dl),
                hsic_unbiased(pair.x.gram_c_dot(), dk, dk),
                hsic_unbiased(pair.y.gram_c_dot(), dl, dl),
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

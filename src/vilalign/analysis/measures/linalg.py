"""Numerical primitives shared by the views and the measure families (float64 throughout).

Why one module: the Gram products, Frobenius inner products, the unbiased HSIC and the
strict upper triangle are each used by several families (CKA, CKNNA, RSA, the views'
caches); written once here, a faster or blocked form later changes them everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor
DTYPE = torch.float64

#: The unbiased HSIC estimator (Song et al. 2012) divides by n(n-3): it needs n > 3.
HSIC_MIN_N = 4


def self_product(a: Tensor, outer: bool) -> Tensor:
    """a aᵀ (``outer``) or aᵀ a, exactly symmetric.

    On CPU numpy computes ``a @ a.T`` with BLAS ``syrk`` (it sees that the operands are
    one buffer), half the flops of the general product torch uses: the Gram matrix is
    the floor of every kernel measure, so this halves the suite's largest cost.
    """
    if a.device.type == "cpu":
        arr = a.contiguous().numpy()
        return torch.from_numpy(arr @ arr.T if outer else arr.T @ arr)
    return a @ a.T if outer else a.T @ a


def frobenius_dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨A, B⟩_F in one fused pass (no N×N temporary)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def double_centre(k: Tensor) -> Tensor:
    row = k.mean(dim=1, keepdim=True)
    return k - row - row.T + row.mean()


def hsic_unbiased_centred(kc: Tensor, lc: Tensor, dot: float) -> float:
    """Unbiased HSIC (Song et al. 2012, JMLR 13, eq. 5) from centred Grams Kc, Lc and
    ⟨Kc, Lc⟩_F, with no N² pass: only their diagonals are read (see :func:`hsic_unbiased`).
    """
    return hsic_unbiased(dot, kc.diagonal(), lc.diagonal())


def hsic_unbiased(dot: float, dk: Tensor, dl: Tensor) -> float:
    """Unbiased HSIC from ⟨Kc, Lc⟩_F and the diagonals d_K, d_L of the centred Grams.

    For zero-diagonal K̃, L̃: HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) − 2/(n-2)·1ᵀK̃L̃1]
    / (n(n-3)), with 1ᵀK̃L̃1 = (K̃ᵀ1)·(L̃1) and tr(K̃L̃) = Σ K̃∘L̃ᵀ (which also holds for the
    non-symmetric masked kernels of CKNNA, as in platonic-rep's ``hsic_unbiased``).
    HSIC₁ is invariant to centring the features (U-centring, Székely & Rizzo 2014), so it
    may be computed from Kc. With K̃ = Kc − diag(d_K): Kc·1 = 0 gives K̃1 = −d_K and
    1ᵀK̃1 = −Σd_K, and tr(K̃L̃) = ⟨Kc, Lc⟩ − d_K·d_L.

    Why these inputs: for linear kernels ⟨Kc, Lc⟩_F = ‖xcᵀyc‖²_F and d_K = ‖xc_i‖², so the
    same formula runs in feature space (O(N·D²) time, D² memory) when no Gram exists.
    """
    n = dk.shape[0]
    dkdl = float(dk @ dl)
    trace = dot - dkdl
    sums = float(dk.sum()) * float(dl.sum()) / ((n - 1) * (n - 2))
    cross = 2.0 * dkdl / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


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


def upper_triangle(mat: Tensor) -> Tensor:
    """The strict upper triangle of a square matrix, row by row.

    On CPU a numpy ``take`` of cached flat indices is several times faster than
    ``masked_select``.
    """
    selector = _triu_selector(mat.shape[0], mat.device)
    if isinstance(selector, np.ndarray):
        return torch.from_numpy(np.take(mat.contiguous().numpy().reshape(-1), selector))
    return mat.masked_select(selector)

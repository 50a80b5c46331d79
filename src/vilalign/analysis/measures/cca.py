"""The CCA family: mean and squared canonical correlation, SVCCA, PWCCA, Procrustes.

All of them work in feature space on the views' cached D×D covariances (accumulated over
row blocks) and whitening factors, so their time grows with N·D² and their memory with D²,
never N².
"""

from __future__ import annotations

import logging
import math

import torch

from vilalign.analysis.measures.linalg import Tensor
from vilalign.analysis.measures.registry import FIT_BIAS, register
from vilalign.analysis.measures.views import Pair, View

log = logging.getLogger(__name__)


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


@register("cca", resample="subsample", interval="subsample_bc", bias=FIT_BIAS)
def cca(p: Pair, center: bool = True) -> float:
    """Mean canonical correlation (ρ̄ of Raghu et al. 2017). Invariant to invertible
    linear maps of either view."""
    rho = p.canonical_correlations(center)
    _warn_if_trivial(p, p.x.whitener(center).rank, p.y.whitener(center).rank)
    return float(rho.mean())


@register("cca_squared", resample="subsample", interval="subsample_bc", bias=FIT_BIAS)
def cca_squared(p: Pair, center: bool = True) -> float:
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


@register("svcca", resample="subsample", interval="subsample_bc", bias=FIT_BIAS)
def svcca(p: Pair, variance: float = 0.99, n_components: int | None = None) -> float:
    """SVCCA (Raghu et al. 2017): SVD-reduce each view to the directions keeping
    ``variance`` of its variance (or ``n_components``), then mean canonical correlation."""
    p.cross_cov()  # first: its pass over the rows also fills both covariances
    ax = _svd_reduce(p.x, variance, n_components)
    ay = _svd_reduce(p.y, variance, n_components)
    # The reduced views xc·ax, yc·ay are already orthonormal bases, so their canonical
    # correlations are the singular values of (xc·ax)ᵀ(yc·ay) = axᵀ Cxy ay.
    rho = torch.linalg.svdvals(ax.T @ p.cross_cov() @ ay).clamp(0.0, 1.0)
    _warn_if_trivial(p, ax.shape[1], ay.shape[1])
    return float(rho.mean())


@register("pwcca", resample="subsample", interval="subsample_bc", bias=FIT_BIAS)
def pwcca(p: Pair) -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018, eq. in §2.3).

    Each canonical correlation ρ_i is weighted by α_i ∝ Σ_j |⟨h_i, x_j⟩|, how much of
    the representation's neurons x_j (centred columns) the canonical variate h_i accounts
    for; weights come from the view with the smaller rank, as in the authors' code.
    """
    p.cross_cov()  # first: its pass over the rows also fills both covariances
    rx, ry = p.x.whitener().rank, p.y.whitener().rank
    pair = p if rx <= ry else Pair(p.y, p.x)
    rho, dirs = pair.canonical_directions()
    # ⟨h_i, x_j⟩ for the variates h = xc·dirs (N×r, orthonormal columns): hᵀxc = dirsᵀ·cov,
    # a D×D product instead of two N-row ones.
    weights = (dirs.T @ pair.x.cov()).abs().sum(dim=1)  # (r,)
    _warn_if_trivial(p, rx, ry)
    return float((weights * rho).sum() / weights.sum())


@register("procrustes", interval="subsample_bc", bias=FIT_BIAS)
def procrustes(p: Pair) -> float:
    """Orthogonal Procrustes similarity: ‖xcᵀ yc‖_* / (‖xc‖_F ‖yc‖_F) ∈ [0, 1].

    After centring and scaling to unit Frobenius norm, min_R ‖x − yR‖²_F over orthogonal
    R equals 2 − 2·this (Schönemann 1966; Ding et al. 2021); widths may differ (the
    narrower view is implicitly zero-padded).
    """
    cross = p.cross_cov()  # first: its pass over the rows also fills both views' norms
    fx, fy = math.sqrt(p.x.spread()), math.sqrt(p.y.spread())  # ‖xc‖_F, ‖yc‖_F
    nuclear = float(torch.linalg.svdvals(cross).sum())
    return nuclear / (fx * fy)

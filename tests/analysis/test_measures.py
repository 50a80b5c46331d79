"""Tests of the alignment measures: published values, reference parity, properties, errors."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
import torch.nn.functional as F

from vilalign.analysis import measures as M

SIMILARITIES = [name for name, m in M.MEASURES.items() if m.higher_is_better]


def _related(n: int = 80, dx: int = 12, dy: int = 9, seed: int = 0, noise: float = 0.5):
    """Two views sharing a 4-d latent, plus independent noise (float64)."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, 4))
    x = z @ g.standard_normal((4, dx)) + noise * g.standard_normal((n, dx))
    y = z @ g.standard_normal((4, dy)) + noise * g.standard_normal((n, dy))
    return torch.tensor(x), torch.tensor(y)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


# ----------------------------------------------------------------- published reference values


@pytest.fixture(scope="module")
def kornblith_data():
    # Data exactly as in google-research/representation_similarity/Demo.ipynb.
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return torch.tensor(x), torch.tensor(y)


def test_kornblith_demo_notebook_values(kornblith_data):
    x, y = kornblith_data
    # The notebook prints 5 decimals; we match to that rounding.
    assert round(M.cka_linear(x, y), 5) == 0.55761
    assert round(M.cka_rbf(x, y, threshold=0.5), 5) == 0.65483
    assert round(M.cka_unbiased(x, y), 5) == 0.51346
    # The notebook's `cca` takes the QR of uncentred features; CCA proper centres.
    assert round(M.cca_squared(x, y, center=False), 5) == 0.54312
    assert M.cca_squared(x, y) != pytest.approx(0.54312, abs=1e-4)


# Values from running minyoungg/platonic-rep `metrics.py` (commit 07ef02a, float64 inputs,
# its own eps=1e-6 in the CKA/CKNNA denominators) on `_platonic_data()` after
# F.normalize, as its measure_alignment.py does. The reference code is not vendored;
# these numbers are what it printed.
PLATONIC = {
    "cka_linear": 0.7863798628978321,
    "cka_unbiased": 0.7764384349141056,
    "cknna": 0.5934181261457495,
    "mutual_knn": 0.5408332943916321,
    "cycle_knn": 0.9750000238418579,
}


def _platonic_data():
    g = np.random.default_rng(2024)
    z = g.standard_normal((120, 6))
    g.standard_normal((120, 24))  # an unused draw kept so the stream matches the run
    x = z @ g.standard_normal((6, 24)) + 0.5 * g.standard_normal((120, 24))
    y = z @ g.standard_normal((6, 16)) + 0.5 * g.standard_normal((120, 16))
    return F.normalize(torch.tensor(x), dim=-1), F.normalize(torch.tensor(y), dim=-1)


@pytest.mark.parametrize("name", sorted(PLATONIC))
def test_platonic_rep_reference_values(name):
    x, y = _platonic_data()
    # Our CKA/CKNNA drop the reference's +1e-6 in the denominator (documented in
    # measures.py); that moves the value by < 2e-5 here.
    assert M.MEASURES[name](x, y) == pytest.approx(PLATONIC[name], abs=1e-4)


def test_platonic_cycle_knn_k1():
    x, y = _platonic_data()
    assert M.cycle_knn(x, y, k=1) == pytest.approx(0.28333333134651184, abs=1e-6)


# ----------------------------------------------------------------- identity and invariance


@pytest.mark.parametrize("name", SIMILARITIES)
def test_identical_inputs_score_one(name):
    x, _ = _related(dx=10)
    assert M.MEASURES[name](x, x.clone()) == pytest.approx(1.0, abs=1e-8)


def test_identical_inputs_wasserstein_zero():
    x, _ = _related(dx=10)
    assert M.wasserstein(x, x.clone()) == pytest.approx(0.0, abs=1e-6)


def test_wasserstein_of_translated_cloud_is_the_shift():
    # W2(μ, μ + c) = ‖c‖ exactly: the optimal plan is the identity (Villani 2009).
    x, _ = _related(n=50, dx=6)
    shift = torch.tensor([3.0, 0, 0, 4.0, 0, 0], dtype=torch.float64)
    assert M.wasserstein(x, x + shift) == pytest.approx(5.0, rel=1e-9)


def test_wasserstein_matches_pot_directly():
    x, y = _related(n=40, dx=5, dy=5)
    a = np.full(40, 1 / 40)
    expected = math.sqrt(ot.emd2(a, a, ot.dist(x.numpy(), y.numpy())))
    assert M.wasserstein(x, y) == pytest.approx(expected, rel=1e-9)
    assert M.MEASURES["wasserstein"].higher_is_better is False


ROTATION_SCALE_INVARIANT = [
    ("cka_linear", {}),
    ("cka_unbiased", {}),
    ("cka_rbf", {}),
    ("cka_minibatch", {"batch_size": 40}),
    ("cca", {}),
    ("cca_squared", {}),
    ("svcca", {}),
    ("procrustes", {}),
    ("rsa", {"inner": "cosine"}),
    ("rsa", {"inner": "euclidean"}),
    ("mutual_knn", {}),
    ("knn_jaccard", {}),
    ("knn_rank", {}),
    ("cycle_knn", {}),
    ("cknna", {}),
]


@pytest.mark.parametrize(("name", "kw"), ROTATION_SCALE_INVARIANT)
def test_invariant_to_rotation_and_isotropic_scaling(name, kw):
    x, y = _related()
    measure = M.MEASURES[name]
    base = measure(x, y, **kw)
    assert measure(x @ _orthogonal(x.shape[1], 1), y, **kw) == pytest.approx(base, abs=1e-9)
    assert measure(x * 3.7, y * 0.2, **kw) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize(
    ("name", "kw"), [("cca", {}), ("cca_squared", {}), ("svcca", {"variance": 1.0})]
)
def test_cca_family_invariant_to_invertible_linear_maps(name, kw):
    # SVCCA is invariant to invertible maps only when it keeps every direction: the SVD
    # truncation depends on the variance spectrum, which a non-orthogonal map changes.
    x, y = _related()
    a = torch.randn(x.shape[1], x.shape[1], generator=torch.Generator().manual_seed(5))
    a = a.to(torch.float64)
    measure = M.MEASURES[name]
    assert measure(x @ a, y, **kw) == pytest.approx(measure(x, y, **kw), abs=1e-8)


def test_cka_is_not_invariant_to_general_linear_maps():
    # Kornblith et al. 2019 §3: CKA is invariant to orthogonal maps only; this is what
    # distinguishes it from CCA, so a test that could not tell them apart would be blind.
    x, y = _related()
    a = torch.randn(x.shape[1], x.shape[1], generator=torch.Generator().manual_seed(5))
    assert abs(M.cka_linear(x @ a.double(), y) - M.cka_linear(x, y)) > 1e-3


def test_pwcca_invariant_to_isotropic_scaling_and_neuron_permutation():
    x, y = _related()
    base = M.pwcca(x, y)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(2))
    assert M.pwcca(x * 5.0, y) == pytest.approx(base, abs=1e-9)
    assert M.pwcca(x[:, perm], y) == pytest.approx(base, abs=1e-9)


def test_paired_cosine_and_wasserstein_invariant_to_a_shared_rotation():
    x, y = _related(dx=8, dy=8)
    q = _orthogonal(8, 3)
    assert M.paired_cosine(x @ q, y @ q) == pytest.approx(M.paired_cosine(x, y), abs=1e-10)
    assert M.wasserstein(x @ q, y @ q) == pytest.approx(M.wasserstein(x, y), rel=1e-8)


# ----------------------------------------------------------------- chance levels


def _independent(n: int, dx: int, dy: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, dx, generator=g, dtype=torch.float64),
        torch.randn(n, dy, generator=g, dtype=torch.float64),
    )


def test_mutual_knn_of_independent_data_is_chance():
    n, k = 300, 10
    scores = [M.mutual_knn(*_independent(n, 16, 16, s), k=k) for s in range(3)]
    # chance k/(N-1) = 0.0334; each score averages 300 overlaps with sd ≈ 0.057/√300.
    assert np.mean(scores) == pytest.approx(k / (n - 1), abs=0.006)


def test_unbiased_cka_of_independent_data_is_near_zero():
    # Under independence E[HSIC₁] = 0 exactly (Song et al. 2012). For isotropic Gaussian
    # views the estimator's sd is ≈ √2/N (a sum of N²/2 nearly uncorrelated products), so
    # 5·√2/N bounds it with a wide margin; averaging 5 draws tightens it by √5.
    n = 200
    scores = [M.cka_unbiased(*_independent(n, 50, 40, s)) for s in range(5)]
    assert abs(np.mean(scores)) < 5 * math.sqrt(2) / n / math.sqrt(5)
    assert max(abs(s) for s in scores) < 5 * math.sqrt(2) / n


def test_biased_cka_of_noise_with_many_features_is_far_from_zero():
    # Documents the bias the unbiased estimator removes: with D ≫ N the centred Gram of
    # pure noise is ≈ D·H for both views, so biased CKA of independent noise is large.
    x, y = _independent(40, 2000, 2000, 7)
    assert M.cka_linear(x, y) > 0.9
    assert abs(M.cka_unbiased(x, y)) < 0.1


# ----------------------------------------------------------------- identities


def test_linear_cka_equals_rv_coefficient():
    x, y = _related(dx=12, dy=7)
    xc = (x - x.mean(0)).numpy()
    yc = (y - y.mean(0)).numpy()
    # RV coefficient (Robert & Escoufier 1976) in feature space.
    rv = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert M.cka_linear(x, y) == pytest.approx(rv, abs=1e-12)


def test_unbiased_cka_matches_kornblith_feature_space_formula():
    # The notebook's debiased feature-space formula, written out independently.
    x, y = _related(n=30, dx=6, dy=5)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    n = xc.shape[0]

    def debiased(a, b):
        ra, rb = (a * a).sum(1), (b * b).sum(1)
        xty = np.linalg.norm(a.T @ b) ** 2
        return xty - n / (n - 2.0) * ra @ rb + ra.sum() * rb.sum() / ((n - 1) * (n - 2))

    expected = debiased(xc, yc) / math.sqrt(debiased(xc, xc) * debiased(yc, yc))
    assert M.cka_unbiased(x, y) == pytest.approx(expected, abs=1e-12)


def test_minibatch_cka_single_batch_equals_full_unbiased_cka():
    x, y = _related(n=100)
    assert M.minibatch_cka(x, y, batch_size=100) == pytest.approx(M.cka_unbiased(x, y), abs=1e-12)


def test_minibatch_cka_converges_to_full_unbiased_cka():
    x, y = _related(n=3000, dx=8, dy=6, seed=3)
    full = M.cka_unbiased(x, y)
    gaps = [abs(M.minibatch_cka(x, y, batch_size=b) - full) for b in (50, 1500)]
    assert gaps[1] < 0.01
    assert gaps[1] < gaps[0] + 1e-3


def test_minibatch_cka_accumulator_and_shuffle_are_repeatable():
    x, y = _related(n=200)
    acc = M.MinibatchCKA()
    for start in range(0, 200, 50):
        acc.update(x[start : start + 50], y[start : start + 50])
    assert acc.batches == 4
    assert acc.compute() == pytest.approx(M.minibatch_cka(x, y, batch_size=50), abs=1e-12)
    a = M.minibatch_cka(x, y, 50, generator=torch.Generator().manual_seed(1))
    b = M.minibatch_cka(x, y, 50, generator=torch.Generator().manual_seed(1))
    assert a == b


def test_procrustes_matches_scipy_orthogonal_procrustes():
    from scipy.linalg import orthogonal_procrustes

    x, y = _related(dx=6, dy=6)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    r, _ = orthogonal_procrustes(yc, xc)
    distance = np.linalg.norm(xc - yc @ r) ** 2
    assert 2 - 2 * M.procrustes(x, y) == pytest.approx(distance, abs=1e-10)


def test_rsa_matches_scipy_spearman_of_correlation_rdms():
    x, y = _related(n=40)
    rdm_x = scipy.spatial.distance.pdist(x.numpy(), "correlation")
    rdm_y = scipy.spatial.distance.pdist(y.numpy(), "correlation")
    expected = scipy.stats.spearmanr(rdm_x, rdm_y).statistic
    assert M.rsa(x, y) == pytest.approx(expected, abs=1e-10)


def test_rank_handles_ties_like_scipy():
    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    from vilalign.analysis.measures.distances import _rank

    np.testing.assert_allclose(_rank(v).numpy(), scipy.stats.rankdata(v.numpy()))


def test_cca_mean_matches_numpy_qr_formulation():
    x, y = _related(n=60, dx=5, dy=4)
    qx, _ = np.linalg.qr((x - x.mean(0)).numpy())
    qy, _ = np.linalg.qr((y - y.mean(0)).numpy())
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    assert M.cca(x, y) == pytest.approx(rho.mean(), abs=1e-10)
    assert M.cca_squared(x, y) == pytest.approx((rho**2).mean(), abs=1e-10)


def test_pwcca_matches_direct_formula():
    # Morcos et al. 2018: α_i ∝ Σ_j |⟨h_i, x_j⟩|, h_i the canonical variates of the view
    # with fewer dimensions, x_j its centred neurons; PWCCA = Σ α_i ρ_i.
    x, y = _related(n=60, dx=4, dy=6)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    qx, _ = np.linalg.qr(xc)
    qy, _ = np.linalg.qr(yc)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u
    alpha = np.abs(h.T @ xc).sum(1)
    assert M.pwcca(x, y) == pytest.approx((alpha * rho).sum() / alpha.sum(), abs=1e-10)


def test_svcca_keeps_99_percent_variance_or_fixed_directions():
    g = torch.Generator().manual_seed(0)
    # 3 strong directions + faint noise: 99 % variance keeps exactly the 3.
    z = torch.randn(100, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, 10, generator=g, dtype=torch.float64) * 10
    x = x + 0.01 * torch.randn(100, 10, generator=g, dtype=torch.float64)
    y = z @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = y + 0.01 * torch.randn(100, 8, generator=g, dtype=torch.float64)
    assert M.svcca(x, y) > 0.999  # the kept 3 directions are shared
    assert M.svcca(x, y, n_components=8) < 0.9  # forced to compare noise directions too
    from vilalign.analysis.measures.cca import _svd_reduce

    assert _svd_reduce(M.View(x), 0.99, None).shape[1] == 3


def _naive_knn(x: np.ndarray, k: int) -> list[list[int]]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    return [list(np.argsort(-row)[:k]) for row in s]


def test_knn_jaccard_and_rank_similarity_match_resi_definitions():
    # ReSi (Klabunde et al. 2024) definitions written as plain loops over samples.
    x, y = _related(n=50)
    k = 6
    nx, ny = _naive_knn(x.numpy(), k), _naive_knn(y.numpy(), k)
    jac = np.mean(
        [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(nx, ny, strict=True)]
    )
    ranks = []
    for a, b in zip(nx, ny, strict=True):
        shared = set(a) & set(b)
        if not shared:
            ranks.append(0.0)
            continue
        norm = sum(1 / m for m in range(1, len(shared) + 1))
        s = sum(
            2 / ((1 + abs(a.index(j) - b.index(j))) * (a.index(j) + b.index(j) + 2)) for j in shared
        )
        ranks.append(s / norm)
    assert M.knn_jaccard(x, y, k=k) == pytest.approx(jac, abs=1e-12)
    assert M.knn_rank(x, y, k=k) == pytest.approx(np.mean(ranks), abs=1e-12)


# ----------------------------------------------------------------- sharing and caches


def test_compute_measures_equals_individual_calls():
    x, y = _related(dx=10, dy=10)
    names = ["cka_linear", "cka_unbiased", "mutual_knn", "cknna", "cca", "rsa", "cosine"]
    opts = {"mutual_knn": {"k": 5}}
    together = M.compute_measures(x, y, names, options=opts)
    for name in names:
        expected = M.MEASURES[name](x, y, **opts.get(name, {}))
        assert together[name] == pytest.approx(expected, abs=1e-12)


def test_compute_measures_default_runs_what_applies():
    x, y = _related(dx=10, dy=7)
    assert set(M.compute_measures(x, y)) == set(M.MEASURES) - {"cosine"}
    assert set(M.compute_measures(x, x @ _orthogonal(10, 0))) == set(M.MEASURES)
    with pytest.raises(ValueError, match="equal widths"):
        M.compute_measures(x, y, ["cosine"])


def test_compute_measures_rejects_options_for_unrequested_measures():
    x, y = _related()
    with pytest.raises(ValueError, match="not requested"):
        M.compute_measures(x, y, ["cka_linear"], options={"cknna": {"k": 3}})


def test_permuted_view_equals_fresh_view():
    x, y = _related(dx=10, dy=10)
    view = M.View(y)
    M.compute_measures(x, view, ["cka_linear", "cka_unbiased", "cka_rbf", "cca", "cknna"])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    names = ["cka_linear", "cka_unbiased", "cka_rbf", "cca", "cknna", "rsa", "cosine"]
    cached = M.compute_measures(x, view.permuted(perm), names)
    fresh = M.compute_measures(x, y[perm], names)
    for name in names:
        assert cached[name] == pytest.approx(fresh[name], abs=1e-12)


def test_float32_input_is_computed_in_float64():
    x, y = _related()
    assert M.cka_unbiased(x.float(), y.float()) == pytest.approx(M.cka_unbiased(x, y), abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measures_agree_on_gpu():
    x, y = _related(dx=10, dy=10)
    cpu = M.compute_measures(x, y, [n for n in M.MEASURES if n != "wasserstein"])
    gpu = M.compute_measures(x.cuda(), y.cuda(), list(cpu))
    for name, value in cpu.items():
        assert gpu[name] == pytest.approx(value, abs=1e-8), name


# ----------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("name", list(M.MEASURES))
def test_every_measure_rejects_nan_and_mismatched_rows(name):
    x, y = _related(dx=10, dy=10)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        M.MEASURES[name](bad, y)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        M.MEASURES[name](x, bad)
    with pytest.raises(ValueError, match="same N"):
        M.MEASURES[name](x, y[:-1])
    with pytest.raises(ValueError, match="N >= 2"):
        M.MEASURES[name](x[:1], y[:1])
    with pytest.raises(ValueError, match="2-D"):
        M.MEASURES[name](x[0], y[0])


@pytest.mark.parametrize("name", [n for n in M.MEASURES if n not in ("wasserstein", "cosine")])
def test_every_structural_measure_rejects_constant_features(name):
    x, y = _related(dx=10, dy=10)
    const = torch.ones_like(x) * 2.5
    with pytest.raises(ValueError, match=r"constant|zero|degenerate"):
        M.MEASURES[name](const, y)


@pytest.mark.parametrize("name", ["mutual_knn", "knn_jaccard", "knn_rank", "cycle_knn", "cknna"])
def test_neighbourhood_measures_reject_k_at_least_n(name):
    x, y = _related(n=20)
    with pytest.raises(ValueError, match="k < N"):
        M.MEASURES[name](x, y, k=20)
    with pytest.raises(ValueError, match="positive"):
        M.MEASURES[name](x, y, k=0)
    assert np.isfinite(M.MEASURES[name](x, y, k=19))


def test_cosine_measures_reject_zero_rows():
    x, y = _related(dx=10, dy=10)
    x[5] = 0
    for name in ("cosine", "mutual_knn", "cknna"):
        with pytest.raises(ValueError, match="all-zero row"):
            M.MEASURES[name](x, y)


def test_unbiased_estimators_need_four_samples():
    x, y = _related(n=3)
    with pytest.raises(ValueError, match="N >= 4"):
        M.cka_unbiased(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        M.minibatch_cka(x, y, batch_size=2)
    with pytest.raises(ValueError, match="before any update"):
        M.MinibatchCKA().compute()


def test_bad_keyword_values_raise():
    x, y = _related()
    with pytest.raises(ValueError, match="threshold"):
        M.cka_rbf(x, y, threshold=0)
    with pytest.raises(ValueError, match="variance"):
        M.svcca(x, y, variance=1.5)
    with pytest.raises(ValueError, match="n_components"):
        M.svcca(x, y, n_components=0)
    with pytest.raises(ValueError, match="inner"):
        M.rsa(x, y, inner="manhattan")
    with pytest.raises(ValueError, match="unknown measure"):
        M.get_measure("ckaa")


def test_cca_warns_when_dimensions_make_correlations_trivial(caplog):
    x, y = _independent(20, 15, 15, 0)
    with caplog.at_level("WARNING", logger="vilalign.analysis.measures"):
        value = M.cca(x, y)
    assert "by construction" in caplog.text
    assert value > 0.5  # spuriously high: the reason for the warning


# ----------------------------------------------------------------- token level


def test_token_maxsim_by_hand():
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # 3 tokens, last is padding
    image = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    tmask = torch.tensor([[1, 1, 0]])
    t2p = M.TOKEN_MEASURES["maxsim_text_to_patch"](text, image, tmask)
    # token 0 best matches patch 0 (cos 1); token 1 best matches patch 1 (cos 1/√2)
    assert t2p == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    p2t = M.TOKEN_MEASURES["maxsim_patch_to_text"](text, image, tmask)
    # patch 0 → token 0 (1); patch 1 → max(1/√2, 1/√2) — the padding token is ignored
    assert p2t == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    p2t_with_pad = M.token_maxsim(text, image, None, None, "patch_to_text")
    assert p2t_with_pad == pytest.approx(1.0)  # patch 1 would match the padding exactly


def test_token_maxsim_identical_and_errors():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 5, 4, generator=g)
    assert M.token_maxsim(t, t.clone()) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="no real tokens"):
        M.token_maxsim(t, t, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="equal B, D"):
        M.token_maxsim(t, t[:, :, :3])
    with pytest.raises(ValueError, match="direction"):
        M.token_maxsim(t, t, direction="sideways")
    with pytest.raises(ValueError, match="B×T×D"):
        M.token_maxsim(t[0], t)


@pytest.mark.parametrize("n", [51, 52])
def test_rbf_cka_matches_direct_formula_for_odd_and_even_n(n):
    # Kornblith et al.'s definition written out: σ² = threshold² · np.median of the full
    # squared-distance matrix, then biased CKA of the double-centred RBF Gram matrices.
    x, y = _related(n=n)

    def centred_rbf(a: np.ndarray, threshold: float) -> np.ndarray:
        sq = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(a, "sqeuclidean"))
        k = np.exp(-sq / (2 * threshold**2 * np.median(sq)))
        h = np.eye(len(a)) - 1 / len(a)
        return h @ k @ h

    kx, ky = centred_rbf(x.numpy(), 0.7), centred_rbf(y.numpy(), 0.7)
    expected = (kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky))
    assert M.cka_rbf(x, y, threshold=0.7) == pytest.approx(expected, abs=1e-12)


def test_large_feature_mean_is_not_mistaken_for_constant_features():
    # Activations often share a large mean direction; centring must not lose them.
    x, y = _related()
    offset = torch.full((x.shape[1],), 1e6, dtype=torch.float64)
    for name in ("cka_linear", "cka_unbiased", "cca", "procrustes"):
        base = M.MEASURES[name](x, y)
        assert M.MEASURES[name](x * 1e-3 + offset, y) == pytest.approx(base, abs=1e-6), name


def test_numpy_integer_k_is_accepted():
    x, y = _related()
    assert M.mutual_knn(x, y, k=np.int64(5)) == M.mutual_knn(x, y, k=5)

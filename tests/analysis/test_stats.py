"""Tests of permutation nulls, intervals and seed aggregation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from vilalign.analysis import measures as M
from vilalign.analysis import stats as S


def _pair(n: int = 60, d: int = 6, noise: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return x, y + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def _independent(n: int = 60, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, d, generator=g, dtype=torch.float64),
    )


# ----------------------------------------------------------------- permutation


def test_permutation_p_value_is_minimal_for_aligned_data():
    x, y = _pair()
    res = S.permutation_test("cka_linear", x, y, n_permutations=99, seed=0)
    assert res.p_value == pytest.approx(1 / 100)  # no shuffle comes close
    assert res.z_score > 5
    assert 0 < res.calibrated <= 1
    assert res.observed == pytest.approx(M.cka_linear(x, y))


def test_permutation_p_values_of_independent_data_are_roughly_uniform():
    ps = [
        S.permutation_test("cka_unbiased", *_independent(seed=s), n_permutations=39, seed=s).p_value
        for s in range(25)
    ]
    # Under H0 the p-value is uniform on {1/40, …, 1}: mean ≈ 0.51 (sd of the mean of 25
    # ≈ 0.058), and P(more than 5 of 25 below 0.05) ≈ 0.007.
    assert 0.33 < np.mean(ps) < 0.69
    assert sum(p <= 0.05 for p in ps) <= 5
    assert scipy.stats.kstest(ps, "uniform").pvalue > 0.01


def test_permutation_test_is_repeatable_and_seed_sensitive():
    x, y = _independent()
    a = S.permutation_test(M.mutual_knn, x, y, n_permutations=20, seed=3, k=5)
    b = S.permutation_test(
        M.mutual_knn, x, y, n_permutations=20, generator=torch.Generator().manual_seed(3), k=5
    )
    c = S.permutation_test(M.mutual_knn, x, y, n_permutations=20, seed=4, k=5)
    np.testing.assert_array_equal(a.null, b.null)
    assert not np.array_equal(a.null, c.null)
    d = S.permutation_test(M.mutual_knn, x, y, 20, generator=np.random.default_rng(9), k=5)
    e = S.permutation_test(M.mutual_knn, x, y, 20, generator=np.random.default_rng(9), k=5)
    np.testing.assert_array_equal(d.null, e.null)


def test_permutation_null_uses_cached_grams_correctly():
    # The cached-Gram path must give the same null as recomputing on y[perm].
    x, y = _pair(n=30)
    res = S.permutation_test("cka_unbiased", x, y, n_permutations=5, seed=1)
    g = torch.Generator().manual_seed(1)
    direct = [M.cka_unbiased(x, y[torch.randperm(30, generator=g)]) for _ in range(5)]
    np.testing.assert_allclose(res.null, direct, atol=1e-12)


def test_plain_callable_measures_are_accepted():
    x, y = _pair()

    def mean_abs_corr(a, b):
        return float(torch.corrcoef(torch.cat([a, b], 1).T)[:6, 6:].abs().mean())

    res = S.permutation_test(mean_abs_corr, x, y, n_permutations=19, seed=0)
    assert res.p_value == pytest.approx(1 / 20)


def test_distance_measures_use_the_lower_tail():
    summary = S.null_summary(0.1, np.array([0.5, 0.6, 0.7, 0.8]), higher_is_better=False, best=0.0)
    assert summary.p_value == pytest.approx(1 / 5)
    assert summary.z_score > 0  # positive = more aligned than chance, for distances too
    assert summary.tau == pytest.approx(np.quantile([0.5, 0.6, 0.7, 0.8], 0.05))
    assert summary.calibrated == pytest.approx((0.1 - summary.tau) / (0.0 - summary.tau))
    worse = S.null_summary(0.9, np.array([0.5, 0.6, 0.7, 0.8]), higher_is_better=False, best=0.0)
    assert worse.p_value == 1.0
    assert worse.z_score < 0


def test_null_summary_formulas_by_hand():
    null = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    s = S.null_summary(0.45, null)
    assert s.p_value == pytest.approx((1 + 1) / 6)
    assert s.z_score == pytest.approx((0.45 - 0.3) / np.std(null, ddof=1))
    tau = np.quantile(null, 0.95)
    assert s.calibrated == pytest.approx((0.45 - tau) / (1 - tau))


def test_calibrated_score_endpoints():
    assert S.calibrated_score(0.3, 0.3) == 0
    assert S.calibrated_score(1.0, 0.3) == 1
    assert math.isnan(S.calibrated_score(1.0, 1.0))


def test_pairing_invariant_measure_warns(caplog):
    x, y = _pair(n=20, d=3)
    with caplog.at_level("WARNING", logger="vilalign.analysis.stats"):
        res = S.permutation_test("wasserstein", x, y, n_permutations=5, seed=0)
    assert "ignores the pairing" in caplog.text
    assert res.p_value == 1.0  # every shuffle gives the same distance


def test_permutation_rejects_bad_arguments():
    x, y = _pair()
    with pytest.raises(ValueError, match="n_permutations"):
        S.permutation_test("cka_linear", x, y, n_permutations=0)
    with pytest.raises(ValueError, match="unknown measure"):
        S.permutation_test("nope", x, y)
    with pytest.raises(ValueError, match="at least 2"):
        S.null_summary(0.5, np.array([0.1]))
    with pytest.raises(ValueError, match="finite"):
        S.null_summary(float("nan"), np.array([0.1, 0.2]))


# ----------------------------------------------------------------- max over layer pairs


def test_max_is_taken_inside_the_permutation_loop():
    xs = [_independent(seed=s)[0] for s in range(3)]
    ys = [_independent(seed=10 + s)[1] for s in range(3)]
    res = S.max_permutation_test("cka_unbiased", xs, ys, n_permutations=30, seed=7)
    single = S.permutation_test("cka_unbiased", xs[0], ys[0], n_permutations=30, seed=7)
    # Same seed → same permutations, so each null draw of the max dominates the single
    # pair's draw; and the observed value is the max of the observed matrix.
    assert np.all(res.summary.null >= single.null - 1e-12)
    assert res.summary.observed == pytest.approx(np.nanmax(res.values))
    assert res.values[res.best_pair] == res.summary.observed
    # Depth inflation: the best of 9 noise pairs looks significant against a single-pair
    # null more often than against the max null.
    naive = (1 + (single.null >= res.summary.observed).sum()) / 31
    assert res.summary.p_value >= naive


def test_max_test_finds_the_aligned_pair_and_respects_pairs():
    x, y = _pair()
    noise = _independent(seed=5)[0]
    res = S.max_permutation_test("cka_linear", [noise, x], [noise.flip(0), y], 19, seed=0)
    assert res.best_pair == (1, 1)
    assert res.summary.p_value == pytest.approx(1 / 20)
    only = S.max_permutation_test("cka_linear", [noise, x], [y], 5, seed=0, pairs=[(0, 0)])
    assert only.best_pair == (0, 0)
    assert np.isnan(only.values[1, 0])


def test_max_test_on_a_distance_takes_the_minimum():
    x, _ = _pair(n=20, d=3)
    res = S.max_permutation_test("wasserstein", [x, x + 5], [x], 3, seed=0)
    assert res.best_pair == (0, 0)
    assert res.summary.observed == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------- intervals


@pytest.mark.parametrize("name", ["cka_linear", "cosine", "procrustes"])
def test_bootstrap_interval_contains_full_sample_value(name):
    x, y = _pair(n=80)
    ci = S.bootstrap_ci(name, x, y, n_resamples=200, seed=0)
    assert ci.method == "bootstrap"
    assert ci.low <= ci.value <= ci.high
    assert ci.high - ci.low > 0


@pytest.mark.parametrize("name", ["mutual_knn", "cka_unbiased", "cknna", "rsa"])
def test_subsample_interval_contains_full_sample_value(name):
    x, y = _pair(n=80, noise=1.0)
    ci = S.bootstrap_ci(name, x, y, n_resamples=100, seed=0)
    assert ci.method == "subsample"
    assert ci.low < ci.value < ci.high


def test_bootstrap_of_knn_measure_with_replacement_is_inflated():
    # Why neighbourhood measures subsample: duplicated rows are each other's neighbours in
    # both views, so resampling with replacement pushes mutual k-NN up.
    x, y = _independent(n=100)
    with_replacement = S.bootstrap_ci("mutual_knn", x, y, 100, seed=0, method="bootstrap", k=5)
    assert np.mean(with_replacement.samples) > 3 * M.mutual_knn(x, y, k=5)


def test_interval_width_shrinks_with_more_samples():
    small = S.bootstrap_ci("cka_linear", *_pair(n=40, noise=1.0), n_resamples=100, seed=0)
    large = S.bootstrap_ci("cka_linear", *_pair(n=300, noise=1.0), n_resamples=100, seed=0)
    assert large.high - large.low < small.high - small.low


def test_bootstrap_is_repeatable_and_checks_arguments():
    x, y = _pair()
    a = S.bootstrap_ci("cka_linear", x, y, 20, seed=1)
    b = S.bootstrap_ci("cka_linear", x, y, 20, seed=1)
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="confidence"):
        S.bootstrap_ci("cka_linear", x, y, 20, confidence=1.5)
    with pytest.raises(ValueError, match="method"):
        S.bootstrap_ci("cka_linear", x, y, 20, method="jackknife")
    with pytest.raises(ValueError, match="fraction"):
        S.bootstrap_ci("mutual_knn", x, y, 20, fraction=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        S.bootstrap_ci("cka_linear", x, y, 1)


def test_subset_view_matches_fresh_view():
    x, y = _pair(n=40)
    vx = M.View(x)
    M.compute_measures(vx, y, ["cka_linear", "cka_unbiased", "mutual_knn"])
    idx = torch.tensor([0, 3, 3, 7, 9, 9, 9, 12, 20, 31, 33, 39])
    M.compute_measures(vx, y, ["mutual_knn", "cka_rbf", "rsa"])
    for name in ("cka_linear", "cka_unbiased", "cosine", "cka_rbf", "mutual_knn", "rsa"):
        assert M.MEASURES[name](vx.subset(idx), y[idx]) == pytest.approx(
            M.MEASURES[name](x[idx], y[idx]), abs=1e-12
        )


# ----------------------------------------------------------------- seeds


def _table():
    rows = []
    for seed, offset in [(0, 0.0), (1, 0.1), (2, 0.2)]:
        for layer in ("fusion.0", "fusion.1"):
            rows.append(
                {
                    "run": f"r{seed}",
                    "seed": seed,
                    "epoch": 1,
                    "dataset": "easyvqa",
                    "layer": layer,
                    "layer_kind": "coattention",
                    "view": "cls",
                    "measure": "cka_linear",
                    "value": 0.5 + offset + (0.2 if layer == "fusion.1" else 0),
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "p_value": np.nan,
                }
            )
    return pd.DataFrame(rows)


def test_aggregate_over_seeds_mean_std_and_t_interval():
    out = S.aggregate_over_seeds(_table())
    assert len(out) == 2
    row = out[out["layer"] == "fusion.0"].iloc[0]
    assert row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(0.1)
    assert row["n"] == 3
    half = scipy.stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(0.6 - half)
    assert row["ci_high"] == pytest.approx(0.6 + half)


def test_aggregate_single_seed_and_errors():
    single = S.aggregate_over_seeds(_table()[lambda t: t["seed"] == 0])
    assert single["n"].tolist() == [1, 1]
    assert single["ci_low"].isna().all()
    with pytest.raises(ValueError, match="not in the table"):
        S.aggregate_over_seeds(_table(), by=["layer", "nope"])
    with pytest.raises(ValueError, match="'score'"):
        S.aggregate_over_seeds(_table(), value="score")

"""A null, an interval and a family-wise p-value on every number; the at-init reference;
the bias warnings; the answer in words (issue 14)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from vilalign.analysis import report as R
from vilalign.analysis import stats as S
from vilalign.analysis.align import RunInfo, alignment_table, bias_warnings
from vilalign.analysis.collect import LayerInfo, Representations
from vilalign.analysis.spec import StatsOptions

N = 48


def _reps(seed: int = 0, aligned: tuple[bool, ...] = (False, True, False), d: int = 8):
    """Fusion layers whose image rows are (True) or are not (False) a noisy copy of text."""
    g = torch.Generator().manual_seed(seed)
    kinds = ["self_attention", "coattention"]
    layers = [
        LayerInfo(f"fusion.{i}", i, kinds[i % 2], ("text", "image")) for i in range(len(aligned))
    ]
    reps = Representations([str(i) for i in range(N)], layers, ("cls",))
    for layer, related in zip(layers, aligned, strict=True):
        text = torch.randn(N, d, generator=g)
        image = text + 0.5 * torch.randn(N, d, generator=g) if related else torch.randn(N, d)
        reps.pooled[(layer.name, "text", "cls")] = text
        reps.pooled[(layer.name, "image", "cls")] = image
    return reps


STATS = StatsOptions(permutations=30, resamples=20, seed=0)


def test_every_row_carries_its_interval_null_and_family_wise_p():
    table = alignment_table(_reps(), ["cka_unbiased", "mutual_knn"], RunInfo(run="r"), STATS,
                            progress=False)  # fmt: skip
    assert tuple(table.columns) == R.COLUMNS
    assert table[["ci_low", "ci_high", "p_value", "null_mean", "calibrated"]].notna().all().all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["null_low"] <= table["null_high"]).all()
    assert set(table["interval"]) == {"subsample"} and (table["n_samples"] == N).all()
    # the max-T adjustment can only raise a p-value, and the aligned layer stays significant
    assert (table["p_familywise"] >= table["p_value"] - 1e-12).all()
    aligned = table[table["layer"] == "fusion.1"]
    assert (aligned["p_familywise"] == 1 / 31).all()
    knn = table[table["measure"] == "mutual_knn"]
    assert knn["null_mean"].to_numpy() == pytest.approx(10 / (N - 1), abs=0.02)  # k/(N−1)


def test_family_wise_p_values_equal_the_max_over_layers_permutation_test():
    reps = _reps(aligned=(False, False, False))
    xs = [reps.get(f"fusion.{i}", "text", "cls") for i in range(3)]
    ys = [reps.get(f"fusion.{i}", "image", "cls") for i in range(3)]
    nulls = [
        S.permutation_test("cka_unbiased", x, y, 40, seed=3) for x, y in zip(xs, ys, strict=True)
    ]
    best = S.max_permutation_test("cka_unbiased", xs, ys, 40, seed=3,
                                  pairs=[(0, 0), (1, 1), (2, 2)])  # fmt: skip
    adjusted = S.familywise_p_values([n.observed for n in nulls], [n.null for n in nulls])
    i = int(np.argmax([n.observed for n in nulls]))
    assert adjusted[i] == pytest.approx(best.summary.p_value)
    np.testing.assert_allclose(np.max([n.null for n in nulls], axis=0), best.summary.null)


def test_too_few_samples_for_an_interval_is_an_error_naming_the_measure_and_numbers():
    from vilalign.analysis.spec import AlignmentSpec
    from vilalign.data import DataConfig

    with pytest.raises(ValueError, match=r"mutual_knn: an interval needs at least 22 .*N = 15"):
        AlignmentSpec(DataConfig(), "test", n_samples=15, measures=["mutual_knn"])
    AlignmentSpec(DataConfig(), "test", n_samples=15, measures=["mutual_knn"], resamples=0)
    x = torch.randn(15, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="mutual_knn: an interval needs at least 22"):
        S.confidence_interval("mutual_knn", x, x, 10)


def test_biased_measures_warn_naming_the_bias_and_the_fix_the_defaults_do_not():
    from vilalign.analysis.defaults import DEFAULT_MEASURES

    reps = _reps(d=64)  # N = 48 < 10·D
    warnings = bias_warnings(reps, ["cka_linear", "cca", "cosine", *DEFAULT_MEASURES])
    assert [w.split(" ")[0] for w in warnings] == ["cka_linear", "cca", "cosine"]
    assert "D/(N+D)" in warnings[0] and "Fix: use cka_unbiased" in warnings[0]
    assert "N = 48, D = 64/64" in warnings[0]
    assert bias_warnings(reps, list(DEFAULT_MEASURES)) == []
    many = Representations(reps.ids * 20, reps.layers, ("cls",))
    many.pooled = {k: v.repeat(20, 1) for k, v in _reps(d=4).pooled.items()}
    assert bias_warnings(many, ["cka_linear"]) == []  # N = 960 ≥ 10·D


def test_the_at_init_reference_gives_init_and_trained_minus_init_with_intervals():
    trained = _reps(seed=0)
    same = alignment_table(trained, ["cka_unbiased"], RunInfo(), STATS, progress=False,
                           references=[trained])  # fmt: skip
    assert same["delta"].to_numpy() == pytest.approx(0.0, abs=1e-12)
    assert (same["delta_low"] <= 0).all() and (same["delta_high"] >= 0).all()
    inits = [_reps(seed=s, aligned=(False, False, False)) for s in (1, 2, 3)]
    for init in inits:  # the same samples (text rows) through an untrained model
        for key in list(init.pooled):
            if key[1] == "text":
                init.pooled[key] = trained.pooled[key]
    table = alignment_table(trained, ["cka_unbiased"], RunInfo(), STATS, progress=False,
                            references=inits)  # fmt: skip
    row = table[table["layer"] == "fusion.1"].iloc[0]
    assert row["delta"] == pytest.approx(row["value"] - row["init_value"])
    assert row["delta_low"] > 0  # learned: not there at initialisation
    assert row["init_low"] <= row["init_value"] <= row["init_high"]


def test_reference_intervals_widen_with_the_spread_over_init_seeds():
    x = torch.randn(40, 3, dtype=torch.float64)
    ys = [x + s * torch.randn(40, 3, dtype=torch.float64) for s in (0.5, 1.0, 2.0)]
    trained = S.confidence_interval("cka_unbiased", x, x + 0.1 * ys[0], 20, seed=0)
    refs = [S.confidence_interval("cka_unbiased", x, y, 20, seed=0) for y in ys]
    one = S.reference_comparison(trained, refs[:1])
    three = S.reference_comparison(trained, refs)
    assert three.reference.value == pytest.approx(np.mean([r.value for r in refs]))
    assert three.delta.high - three.delta.low > one.delta.high - one.delta.low
    with pytest.raises(ValueError, match="share method"):
        S.reference_comparison(trained, [S.confidence_interval("cka_unbiased", x, x, 10)])


def test_seed_interval_combines_seeds_and_shared_samples():
    mean, low, high = S.seed_interval([0.4, 0.5, 0.6], [0.35, 0.45, 0.55], [0.45, 0.55, 0.65])
    seeds = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) · sd / √3
    assert mean == pytest.approx(0.5)
    assert high - mean == pytest.approx(math.hypot(seeds, 0.05), rel=1e-5)
    assert mean - low == pytest.approx(high - mean)
    assert S.seed_interval([0.3], [0.2], [0.4]) == (0.3, 0.2, 0.4)


def test_no_interval_passes_a_perfect_score():
    """CKA is at most 1 and a distance at least 0, so no interval (nor a mean over seeds)
    reaches past that; clipping keeps the value inside and never uncovers a value the
    measure can take. (The demo's 3-seed interval of unbiased CKA reached 1.227.)"""
    assert S.value_limits("cka_unbiased") == (-math.inf, 1.0)
    assert S.value_limits("wasserstein") == (0.0, math.inf)
    assert S.value_limits(lambda x, y: 0.0) == (-math.inf, math.inf)
    limits = S.value_limits("cka_unbiased")
    values, lows, highs = [0.6, 0.85, 0.95], [0.5, 0.8, 0.9], [0.7, 0.9, 1.0]
    mean, low, high = S.seed_interval(values, lows, highs, limits=limits)
    free = S.seed_interval(values, lows, highs)
    assert free[2] > 1 and high == 1.0 and (mean, low) == free[:2]
    # the same spread far from the bound is not clipped at all
    assert S.seed_interval([v - 0.5 for v in values], lows, highs, limits=limits)[2] < 1
    # one seed near a perfect score: a nearly exact copy
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = x + 1e-3 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    ci = S.confidence_interval("cka_unbiased", x, y, 50, seed=0)
    assert ci.low <= ci.value <= ci.high <= 1.0
    table = pd.DataFrame({"measure": "cka_unbiased", "layer": "fusion.0", "seed": [0, 1, 2],
                          "value": values, "ci_low": lows, "ci_high": highs})  # fmt: skip
    assert S.aggregate_over_seeds(table)["ci_high"].iloc[0] == 1.0


def _epoch_table() -> pd.DataFrame:
    rows = []
    for run, kind, start, end in (("vilbert", "coattention", 0.8, 0.6),
                                  ("no_coattention", "self_attention", 0.01, 0.012)):  # fmt: skip
        for seed in (0, 1, 2):
            for epoch, value in ((0, start), (3, end)):
                v = value + 0.005 * seed
                rows.append({"run": run, "seed": seed, "epoch": epoch, "dataset": "d",
                             "layer": "fusion.3", "layer_kind": kind, "view": "cls",
                             "measure": "cka_unbiased", "value": v, "ci_low": v - 0.02,
                             "ci_high": v + 0.02, "null_mean": 0.0})  # fmt: skip
    return R.make_table(rows)


def test_the_answer_sentence_states_change_intervals_and_chance():
    table = _epoch_table()
    changes = R.epoch_change(table, "cka_unbiased", "fusion.3", "cls")
    assert list(changes["run"]) == ["vilbert", "no_coattention"]
    assert changes["coattention"].tolist() == [True, False]
    text = R.answer_sentence(changes, "cka_unbiased", "fusion.3", "cls")
    assert text.startswith(
        "co-attention (vilbert) lowers cka_unbiased at fusion.3 (cls view) from 0.805 ["
    )
    assert "at init to 0.605 [" in text
    assert "without co-attention (no_coattention) it stays at 0.017 [" in text
    assert text.endswith("chance 0.000 (3 seeds per model; 95 % intervals)")


def test_text_report_names_the_best_layer_with_its_family_wise_p():
    table = alignment_table(_reps(), ["cka_unbiased"], RunInfo(), STATS, progress=False)
    text = R.text_report(table, ["cka_linear is biased at ..."])
    assert text.startswith("warning: cka_linear is biased")
    assert "fusion.1    coattention" in text
    assert "-> best layer by cka_unbiased (cls view): fusion.1 = " in text
    assert "family-wise p = 0.0323 over 3 layers" in text

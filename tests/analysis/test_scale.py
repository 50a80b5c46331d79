"""Measures at scale: every form gives the dense value, memory is a budget, bad input fails early.

The dense (N×N) forms are the reference: each blocked or feature-space form must give
the same value to 1e-10 on the same float64 inputs, and the k-NN forms the same
neighbour lists, near-ties included. A tiny memory budget forces the blocked forms with
several blocks, so the block boundaries are exercised on small inputs.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vilalign.analysis import measures as M
from vilalign.analysis import stats as S
from vilalign.analysis.measures import budget
from vilalign.analysis.measures.cka import _median_blocked, _median_distance
from vilalign.analysis.measures.views import SUBSAMPLE_SEED
from vilalign.analysis.spec import AlignmentOptions
from vilalign.analysis.store import DiskRows

TINY_GB = 2e-4  # 200 kB: the views stay lazy and every pass takes several blocks
EXACT = [n for n in M.MEASURES if n not in ("rsa", "wasserstein")]
OPTIONS = {"cka_minibatch": {"batch_size": 64}}


def _pair(n: int = 240, dx: int = 24, dy: int = 18, seed: int = 0):
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, 4))
    x = z @ g.standard_normal((4, dx)) + 0.8 * g.standard_normal((n, dx)) + 0.5
    y = z @ g.standard_normal((4, dy)) + 0.8 * g.standard_normal((n, dy)) - 2.0
    return torch.tensor(x), torch.tensor(y)


def _both_forms(name: str, x, y, **options) -> tuple[float, float]:
    with M.settings(form="dense"):
        dense = M.MEASURES[name](x, y, **options)
    with M.settings(form="blocked", memory_gb=TINY_GB):
        blocked = M.MEASURES[name](x, y, **options)
    return dense, blocked


@pytest.mark.parametrize("name", EXACT)
def test_blocked_and_feature_space_forms_equal_the_dense_form(name):
    x, y = _pair(dy=24) if M.MEASURES[name].equal_dims else _pair()
    dense, blocked = _both_forms(name, x, y, **OPTIONS.get(name, {}))
    assert blocked == pytest.approx(dense, abs=1e-10)


def test_the_cheapest_form_is_chosen_for_n_and_d():
    # D < N/2: linear CKA in feature space (no N×N matrix); D > N: Gram form.
    x, y = _pair(n=400, dx=8, dy=6)
    pair = M.Pair(x, y)
    assert not pair.gram_form()
    M.cka_unbiased(pair.x, pair.y)
    assert not pair.x.has("gram_c") and pair.x.has("cov")
    wide = M.Pair(*_pair(n=30, dx=60, dy=50))
    assert wide.gram_form()
    with M.settings(memory_gb=1e-5):  # the Gram matrices no longer fit
        assert not M.Pair(*_pair(n=30, dx=60, dy=50)).gram_form()


def _near_ties(n_base: int = 40, copies: int = 4, d: int = 16, seed: int = 1) -> torch.Tensor:
    """Groups of rows whose cosines differ by ~1e-9: apart in float64, tied in float32."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_base, d, generator=g, dtype=torch.float64)
    rows = base.repeat_interleave(copies, dim=0)
    return rows + 1e-4 * torch.randn(rows.shape, generator=g, dtype=torch.float64)


def test_knn_lists_equal_float64_lists_with_near_ties():
    x, y = _near_ties(), _near_ties(seed=2)
    with M.settings(form="dense"):
        dense = M.View(x).knn(7)
    with M.settings(form="blocked", memory_gb=TINY_GB):
        view = M.View(x)
        blocked = view.knn(7)
        assert bool((view.neighbours(7).certified >= 7).all())
    torch.testing.assert_close(blocked, dense, rtol=0, atol=0)
    for name in ("mutual_knn", "knn_rank", "cknna"):
        d, b = _both_forms(name, x, y, k=7)
        assert b == pytest.approx(d, abs=1e-12), name


def test_float32_error_bound_holds_for_unit_vectors():
    from vilalign.analysis.measures.topk import float32_error

    g = torch.Generator().manual_seed(0)
    for d in (3, 64, 768):
        a = torch.nn.functional.normalize(torch.randn(2000, d, generator=g, dtype=torch.float64))
        b = torch.nn.functional.normalize(torch.randn(2000, d, generator=g, dtype=torch.float64))
        error = ((a.float() * b.float()).sum(1).double() - (a * b).sum(1)).abs().max()
        assert float(error) < float32_error(d)


def test_permutation_and_subsample_reuse_blocked_neighbour_lists():
    x, y = _pair()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))
    half = perm[:120]
    names = ["mutual_knn", "knn_jaccard", "knn_rank", "cycle_knn", "cknna", "cka_unbiased"]
    with M.settings(form="blocked", memory_gb=TINY_GB):
        vx, vy = M.View(x, "x"), M.View(y, "y")
        M.compute_measures(vx, vy, names)
        permuted = M.compute_measures(vx, vy.permuted(perm), names)
        assert vy.permuted(perm).has(("knn", 10))  # renamed, not recomputed
        subset = M.compute_measures(vx.subset(half), vy.subset(half), names)
        fresh_perm = M.compute_measures(x, y[perm], names)
        fresh_subset = M.compute_measures(x[half], y[half], names)
    for name in names:
        assert permuted[name] == pytest.approx(fresh_perm[name], abs=1e-10), name
        assert subset[name] == pytest.approx(fresh_subset[name], abs=1e-10), name


def test_null_and_interval_are_the_same_in_both_forms():
    x, y = _pair(n=120)
    for name in ("cka_unbiased", "mutual_knn", "cknna"):
        with M.settings(form="dense"):
            null = S.permutation_test(name, x, y, n_permutations=6, seed=1).null
            ci = S.bootstrap_ci(name, x, y, n_resamples=5, seed=2)
        with M.settings(form="blocked", memory_gb=TINY_GB):
            null_b = S.permutation_test(name, x, y, n_permutations=6, seed=1).null
            ci_b = S.bootstrap_ci(name, x, y, n_resamples=5, seed=2)
        np.testing.assert_allclose(null_b, null, atol=1e-10)
        np.testing.assert_allclose(ci_b.samples, ci.samples, atol=1e-10)


@pytest.mark.parametrize("n", [61, 62])
def test_blocked_median_of_distances_is_exact(n):
    x, _ = _pair(n=n)
    dense = _median_distance(M.View(x).sqdist())
    with M.settings(memory_gb=TINY_GB):
        assert _median_blocked(M.View(x)) == pytest.approx(dense, rel=1e-12)


@pytest.mark.parametrize(("name", "limit_bytes"), [("rsa", 64), ("wasserstein", 48)])
def test_measures_without_a_linear_form_subsample_and_say_so(name, limit_bytes, caplog):
    x, y = _pair(n=200, dx=8, dy=8)
    gb = limit_bytes * 50**2 / 1e9  # the dense form fits 50 rows
    with M.settings(memory_gb=gb), caplog.at_level(logging.WARNING):
        result = M.measure_results(M.View(x, "fusion.0/text/cls"), y, [name])[name]
    assert result.rows == 50
    assert "seeded subsample of 50 rows" in caplog.text and "fusion.0/text/cls" in caplog.text
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(SUBSAMPLE_SEED))[:50]
    rows = rows.sort().values
    assert result.value == pytest.approx(M.MEASURES[name](x[rows], y[rows]), abs=1e-10)
    assert M.measure_results(x, y, [name])[name].rows == 200  # the default budget fits all


def test_wasserstein_between_widths_does_not_depend_on_eigenvector_signs(monkeypatch):
    x, y = _pair(n=60, dx=9, dy=5)
    base = M.wasserstein(x, y)
    eigh = torch.linalg.eigh
    g = torch.Generator().manual_seed(0)

    def flipped(a: torch.Tensor):
        evals, evecs = eigh(a)
        signs = torch.randint(0, 2, (evecs.shape[1],), generator=g).to(evecs) * 2 - 1
        return evals, evecs * signs

    values = set()
    for _ in range(4):
        monkeypatch.setattr(torch.linalg, "eigh", flipped)
        values.add(round(M.wasserstein(x, y), 12))
    assert values == {round(base, 12)}


def test_a_budget_too_small_for_one_block_names_measure_layer_and_numbers():
    x, y = _pair(n=5000, dx=4, dy=4)
    with M.settings(memory_gb=1e-5), pytest.raises(ValueError) as err:
        M.compute_measures(M.View(x, "fusion.2/text/cls"), y, ["mutual_knn"])
    message = str(err.value)
    assert message.startswith("mutual_knn on fusion.2/text/cls vs y")
    assert "one block row needs" in message and "memory_gb=1e-05" in message
    with pytest.raises(ValueError, match=r"memory_gb: 1e-05 GB is too small for mutual_knn"):
        AlignmentOptions(n_samples=100_000, measures=["mutual_knn"], memory_gb=1e-5)
    AlignmentOptions(n_samples=100_000, measures=["cka_linear"], memory_gb=1e-5)


def test_nan_rows_are_counted_and_named():
    x, y = _pair()
    x[[3, 70], 1] = float("nan")
    with pytest.raises(ValueError) as err:
        M.compute_measures(M.View(y, "fusion.1/image/cls"), x, ["cka_unbiased"])
    assert "NaN or inf values in 2 of 240 rows (first: [3, 70])" in str(err.value)


def test_a_view_reads_a_file_block_by_block(tmp_path):
    x, y = _pair()
    rows = DiskRows.create(tmp_path / "x.npy", tuple(x.shape), np.float32)
    rows.write(0, x[:100].numpy())
    rows.write(100, x[100:].numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x.float().numpy())
    names = ["cka_linear", "cka_unbiased", "mutual_knn", "cca", "cka_rbf"]
    expected = M.compute_measures(x.float(), y, names)
    with M.settings(memory_gb=TINY_GB):
        view = M.View(rows, "x")
        assert "x" not in view._cache  # lazy: read in blocks
        got = M.compute_measures(view, y, names)
    for name in names:
        assert got[name] == pytest.approx(expected[name], abs=1e-10), name


def test_a_registered_null_is_what_the_statistics_call():
    calls = []

    def null(vx, vy, perms, shift=0.0):
        perms = list(perms)
        calls.append(len(perms))
        return [float(p[0]) + shift for p in perms]

    @M.register("toy_null", null=null)
    def toy_null(p: M.Pair, shift: float = 0.0) -> float:
        return 100.0 + shift

    try:
        x, y = _pair(n=30)
        res = S.permutation_test("toy_null", x, y, n_permutations=7, seed=0, shift=0.5)
        g = torch.Generator().manual_seed(0)
        expected = [float(torch.randperm(30, generator=g)[0]) + 0.5 for _ in range(7)]
        np.testing.assert_array_equal(res.null, expected)
        assert calls == [7]
    finally:
        M.REGISTRY.pop("toy_null")


def test_a_max_null_draws_the_same_permutations_for_every_pair():
    xs = [_pair(n=50, seed=s)[0] for s in range(2)]
    ys = [_pair(n=50, seed=s)[1] for s in range(2)]
    res = S.max_permutation_test("cka_linear", xs, ys, n_permutations=5, seed=4)
    g = torch.Generator().manual_seed(4)
    perms = [torch.randperm(50, generator=g) for _ in range(5)]
    by_hand = [max(M.cka_linear(x, y[p]) for x in xs for y in ys) for p in perms]
    np.testing.assert_allclose(res.summary.null, by_hand, atol=1e-12)


def test_settings_are_validated_and_scoped():
    with pytest.raises(ValueError, match="memory_gb"):
        budget.Settings(memory_gb=0)
    with pytest.raises(ValueError, match="form"):
        budget.Settings(form="sparse")
    before = budget.current()
    with M.settings(memory_gb=0.5, form="blocked"):
        assert budget.current().memory_gb == 0.5
    assert budget.current() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocked_forms_agree_on_gpu():
    x, y = _pair()
    names = [n for n in EXACT if not M.MEASURES[n].equal_dims]
    with M.settings(form="dense"):
        cpu = M.compute_measures(x, y, names, {"cka_minibatch": {"batch_size": 64}})
    with M.settings(form="blocked", memory_gb=TINY_GB):
        gpu = M.compute_measures(x.cuda(), y.cuda(), names, {"cka_minibatch": {"batch_size": 64}})
    for name in names:
        assert gpu[name] == pytest.approx(cpu[name], abs=1e-10), name


def test_rsa_null_reindexes_ranks_and_keeps_its_subsample():
    x, y = _pair(n=80, dx=8, dy=8)
    fresh = S.permutation_test("rsa", x, y, n_permutations=4, seed=5)
    g = torch.Generator().manual_seed(5)
    by_hand = [M.rsa(x, y[torch.randperm(80, generator=g)]) for _ in range(4)]
    np.testing.assert_allclose(fresh.null, by_hand, atol=1e-12)
    with M.settings(memory_gb=64 * 30**2 / 1e9):  # 30 of the 80 rows fit
        sub = S.permutation_test("rsa", x, y, n_permutations=4, seed=5)
    rows = torch.randperm(80, generator=torch.Generator().manual_seed(SUBSAMPLE_SEED))[:30]
    xs, ys = x[rows.sort().values], y[rows.sort().values]
    assert sub.observed == pytest.approx(M.rsa(xs, ys), abs=1e-12)
    g = torch.Generator().manual_seed(5)
    perms = [torch.randperm(80, generator=g)[rows.sort().values].argsort() for _ in range(4)]
    np.testing.assert_allclose(sub.null, [M.rsa(xs, ys[p]) for p in perms], atol=1e-12)


@pytest.mark.slow
def test_forms_agree_at_a_few_thousand_samples():
    # Realistic widths and several blocks per pass at the default budget's scale: the
    # dense forms still fit at N = 3,000, so both can be compared on the same inputs.
    x, y = _pair(n=3000, dx=256, dy=192, seed=7)
    names = [n for n in EXACT if not M.MEASURES[n].equal_dims]
    with M.settings(form="dense"):
        dense = M.compute_measures(x, y, names)
    with M.settings(form="blocked", memory_gb=0.02):
        blocked = M.compute_measures(x, y, names)
    for name in names:
        assert blocked[name] == pytest.approx(dense[name], abs=1e-10), name


def test_duplicated_rows_tie_by_lower_index_in_both_forms():
    # Several samples showing the same image give identical image rows (exact ties): the
    # lists keep the lowest-index duplicates, whatever the form.
    g = torch.Generator().manual_seed(4)
    base = torch.randn(30, 12, generator=g, dtype=torch.float64)
    x = base[torch.arange(150) % 30]  # every row 5 times
    lists = []
    for form, gb in (("dense", None), ("blocked", TINY_GB), ("blocked", 0.05)):
        with M.settings(form=form, memory_gb=gb):
            lists.append(M.View(x).knn(7))
    for other in lists[1:]:
        torch.testing.assert_close(other, lists[0], rtol=0, atol=0)
    # row 0's 4 copies (30, 60, 90, 120) come first, then the lowest-index duplicates of
    # its nearest other base row
    assert lists[0][0, :4].tolist() == [30, 60, 90, 120]
    nearest = lists[0][0, 4:].tolist()
    assert nearest == sorted(nearest) and len({j % 30 for j in nearest}) == 1


def test_token_maxsim_in_sample_blocks_equals_one_pass():
    g = torch.Generator().manual_seed(6)
    text, image = torch.randn(40, 7, 8, generator=g), torch.randn(40, 9, 8, generator=g)
    mask = (torch.arange(7)[None, :] < torch.randint(1, 8, (40, 1), generator=g)).long()
    whole = [M.token_maxsim(text, image, mask, None, d) for d in ("text_to_patch", "patch_to_text")]
    with M.settings(memory_gb=4 * 3000 / 1e9 / 0.25):  # ~3 samples per block
        blocks = [
            M.token_maxsim(text, image, mask, None, d) for d in ("text_to_patch", "patch_to_text")
        ]
    assert blocks == pytest.approx(whole, abs=1e-12)

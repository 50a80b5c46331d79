"""The measure registry: one registration is all a new measure needs.

A toy pooled measure and a toy token measure are registered here, in the test, and
must reach everything that reads the registry — ``compute_measures``, the alignment
table, the permutation test, the experiment and run files' validation — with nothing
else edited.
"""

from __future__ import annotations

import pytest
import torch

from vilalign.analysis import measures as M
from vilalign.analysis.align import RunInfo, alignment_table
from vilalign.analysis.collect import LayerInfo, Representations
from vilalign.config import ConfigError, validate

N, T = 40, 5


@pytest.fixture
def toys():
    """A pooled and a token-level toy measure, registered for one test only."""

    @M.register("toy_mean_product", min_n=30, resample="subsample")
    def toy_mean_product(p: M.Pair, k: int = 3) -> float:
        """Mean of x·y over paired rows (equal widths), shifted by k."""
        return float((p.x.x * p.y.x).sum(dim=1).mean()) + k

    @M.register("toy_token_count", level=M.TOKENS, min_n=1)
    def toy_token_count(text, image, text_mask=None, image_mask=None) -> float:
        """Real text tokens per sample."""
        return float(text_mask.sum() / text.shape[0])

    yield
    for name in ("toy_mean_product", "toy_token_count"):
        M.REGISTRY.pop(name)


def _representations() -> Representations:
    g = torch.Generator().manual_seed(0)
    layers = [LayerInfo("fusion.0", 0, "coattention", ("text", "image"))]
    reps = Representations([str(i) for i in range(N)], layers, ("cls", "tokens"))
    for stream in ("text", "image"):
        reps.pooled[("fusion.0", stream, "cls")] = torch.randn(N, 6, generator=g)
        reps.tokens[("fusion.0", stream)] = torch.randn(N, T, 6, generator=g)
    reps.text_mask = torch.ones(N, T, dtype=torch.long)
    reps.text_mask[:, 3:] = 0
    return reps


def test_a_registered_measure_reaches_compute_measures_and_the_table(toys):
    reps = _representations()
    x, y = reps.get("fusion.0", "text", "cls"), reps.get("fusion.0", "image", "cls")
    expected = float((x.double() * y.double()).sum(1).mean()) + 3
    assert M.compute_measures(x, y, ["toy_mean_product"]) == {"toy_mean_product": expected}
    assert "toy_mean_product" in M.MEASURES and "toy_token_count" in M.TOKEN_MEASURES
    table = alignment_table(
        reps, ["toy_mean_product", "toy_token_count"], RunInfo(run="r"), progress=False
    )
    rows = {(r.view, r.measure): r.value for r in table.itertuples()}
    assert rows == {("cls", "toy_mean_product"): expected, ("tokens", "toy_token_count"): 3.0}


def test_a_registered_measure_gets_statistics_from_its_declaration(toys):
    from vilalign.analysis import stats as S

    reps = _representations()
    x, y = reps.get("fusion.0", "text", "cls"), reps.get("fusion.0", "image", "cls")
    null = S.permutation_test("toy_mean_product", x, y, n_permutations=20, seed=0)
    assert null.observed == pytest.approx(M.MEASURES["toy_mean_product"](x, y))
    interval = S.bootstrap_ci("toy_mean_product", x, y, n_resamples=10, seed=0)
    assert interval.method == "subsample"  # what the registration declared
    with pytest.raises(ValueError, match="token_count is tokens-level"):
        S.permutation_test("toy_token_count", x, y, n_permutations=5)


def test_experiment_and_run_files_accept_a_registered_measure_and_its_needs(toys):
    from vilalign.experiments.spec import AnalysisConfig, ExperimentConfig
    from vilalign.train.config import EpochAlignmentConfig

    exp = {"name": "toy", "analysis": {"n_samples": 30, "measures": ["toy_mean_product"],
                                       "resamples": 0}}  # fmt: skip
    assert validate(ExperimentConfig, exp).analysis.measures == ["toy_mean_product"]
    assert EpochAlignmentConfig(measures=["toy_mean_product"]).heatmap_measure == (
        "toy_mean_product"
    )
    AnalysisConfig(views=["cls", "tokens"], measures=["toy_token_count", "cka_linear"])
    # min_n=30 declared at registration: 29 samples are refused when the file is read
    exp["analysis"]["n_samples"] = 29
    with pytest.raises(ConfigError, match="29 is too few for toy_mean_product"):
        validate(ExperimentConfig, exp)
    # a token-level measure without the token view would silently measure nothing
    with pytest.raises(ValueError, match="toy_token_count is token-level"):
        AnalysisConfig(measures=["toy_token_count"])


def test_the_registry_refuses_a_second_name_and_an_unknown_level(toys):
    with pytest.raises(ValueError, match="already registered"):
        M.register("toy_mean_product")(lambda p: 0.0)
    with pytest.raises(ValueError, match="level 'sentences'"):
        M.register("toy_other", level="sentences")(lambda p: 0.0)
    assert "toy_other" not in M.REGISTRY
    with pytest.raises(ValueError, match="level 'sentences'"):
        M.measures_for("sentences")


def test_token_measures_live_in_the_registry_with_their_own_signature():
    g = torch.Generator().manual_seed(1)
    text, image = torch.randn(3, 4, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    measure = M.get_measure("maxsim_text_to_patch")
    assert measure.level == M.TOKENS and measure is M.TOKEN_MEASURES[measure.name]
    assert measure(text, image, mask) == M.token_maxsim(text, image, mask)
    assert set(M.TOKEN_MEASURES) == {"maxsim_text_to_patch", "maxsim_patch_to_text"}
    assert not set(M.TOKEN_MEASURES) & set(M.MEASURES)
    assert set(M.REGISTRY) == set(M.MEASURES) | set(M.TOKEN_MEASURES)
    with pytest.raises(ValueError, match="tokens-level measure: call it on token states"):
        M.compute_measures(text[:, 0], image[:, 0], ["maxsim_text_to_patch"])


def test_what_a_measure_needs_is_read_from_its_registration():
    # k-NN measures need k + 1 samples (self is excluded); unbiased HSIC needs 4.
    assert M.get_measure("mutual_knn").min_samples() == 11
    assert M.get_measure("mutual_knn").min_samples({"k": 3}) == 4
    assert M.get_measure("cka_unbiased").min_samples() == 4
    assert M.get_measure("cka_linear").min_samples() == 2
    x = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="N >= 4"):  # the declaration matches the estimator
        M.cka_unbiased(x, x)

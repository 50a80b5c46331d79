"""Known-answer cases for every registered measure, and the coverage of its interval.

An interval is tested for what it promises: over many independent draws from a known
distribution, the default 95 % interval should contain the quantity it targets in about
95 % of them. Each :class:`Case` draws N paired samples and knows its estimand:

* a **population value** known analytically. x ~ N(0, I₅) and y = x + ε with ε ~ N(0, I₅)
  (noise of equal variance): Σxx = I, Σyy = 2I, Σxy = I, so linear CKA is
  ‖Σxy‖²_F / (‖Σxx‖_F ‖Σyy‖_F) = 5 / (√5 · 2√5) = 0.5, each of the five canonical
  correlations is 1/√2 (so mean CCA, SVCCA and PWCCA are 1/√2 and R²_CCA 0.5), and
  Procrustes ‖Σxy‖_* / √(tr Σxx · tr Σyy) = 5/√50 = 1/√2;
* a **population value from one very large sample** where no closed form exists
  (RBF CKA, RSA, paired cosine, MaxSim);
* **E[θ̂_N]**, the mean of the estimate over many independent draws of N samples, for the
  measures whose value depends on N by definition (a fixed k of neighbours among N
  samples; the 2-Wasserstein distance between two empirical clouds): the interval of
  such a measure can only promise the value the same experiment gives on average.

Used by ``tests/analysis/test_coverage.py`` (fast and slow) and ``benchmarks/coverage.py``
(the table of docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from vilalign.analysis import measures as M
from vilalign.analysis import stats as S

Draw = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]

#: Width of the Gaussian known-answer pair, and the token case's sequence lengths.
WIDTH = 5
TEXT_TOKENS, PATCHES = 6, 8
#: Draws behind an E[θ̂_N] estimand; its Monte-Carlo error is then ~2 % of θ̂'s spread.
MC_DRAWS = 2000


def gaussian_pair(n: int, g: torch.Generator) -> Draw:
    """x ~ N(0, I₅), y = x + ε, ε ~ N(0, I₅): linear CKA 0.5, canonical correlations 1/√2."""
    x = torch.randn(n, WIDTH, generator=g, dtype=torch.float64)
    return x, x + torch.randn(n, WIDTH, generator=g, dtype=torch.float64), None


def unrelated_wide(n: int, g: torch.Generator, d: int = 100) -> Draw:
    """Independent N(0, I_d) features, wider than N: where biased measures go wrong."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.randn(n, d, generator=g, dtype=torch.float64), None


def token_pair(n: int, g: torch.Generator) -> Draw:
    """Patches z ~ N(0, I₅); each text token is a random patch of its sample plus noise;
    text lengths vary (2..6 real tokens), so the mask matters."""
    image = torch.randn(n, PATCHES, WIDTH, generator=g, dtype=torch.float64)
    pick = torch.randint(0, PATCHES, (n, TEXT_TOKENS), generator=g)
    text = image.gather(1, pick[..., None].expand(-1, -1, WIDTH))
    text = text + torch.randn(n, TEXT_TOKENS, WIDTH, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, TEXT_TOKENS + 1, (n,), generator=g)
    mask = torch.arange(TEXT_TOKENS)[None, :] < lengths[:, None]
    return text, image, mask


@dataclass(frozen=True)
class Case:
    """A measure on a known distribution and the quantity its interval should cover."""

    measure: str
    draw: Callable[[int, torch.Generator], Draw]
    #: "population" (analytic or from ``large_n`` rows) or "expected" (E[θ̂_N]).
    estimand: str
    value: float | None = None  # the analytic population value
    large_n: int = 0  # rows of the one large sample giving a Monte-Carlo population value
    options: tuple[tuple[str, Any], ...] = ()  # the measure's keyword arguments

    def target(self, n: int) -> float:
        """The value the interval at sample size ``n`` should contain."""
        if self.value is not None:
            return self.value
        if self.estimand == "population":
            return _large_sample_value(self.measure, self.large_n)
        return _expected_value(self.measure, n)

    def describe(self) -> str:
        if self.value is not None:
            return f"population, analytic ({self.value:.4f})"
        if self.estimand == "population":
            return f"population, one sample of N = {self.large_n:,}"
        return f"E[θ̂_N], mean of {MC_DRAWS:,} draws"


SQRT_HALF = math.sqrt(0.5)
_G, _T = gaussian_pair, token_pair

#: The known-answer cases that know more than E[θ̂_N] (an analytic or large-sample
#: population value) or need options; every other measure gets :func:`case_for`'s default.
CASES: dict[str, Case] = {
    c.measure: c
    for c in [
        Case("cka_linear", _G, "population", 0.5),
        Case("cka_unbiased", _G, "population", 0.5),
        # batches of 16: several per sample and per half-sample, so the average matters
        Case("cka_minibatch", _G, "population", 0.5, options=(("batch_size", 16),)),
        Case("cka_rbf", _G, "population", large_n=4000),
        Case("cca", _G, "population", SQRT_HALF),
        Case("cca_squared", _G, "population", 0.5),
        Case("svcca", _G, "population", SQRT_HALF),
        Case("pwcca", _G, "population", SQRT_HALF),
        Case("procrustes", _G, "population", SQRT_HALF),
        Case("mutual_knn", _G, "expected"),
        Case("knn_jaccard", _G, "expected"),
        Case("knn_rank", _G, "expected"),
        Case("cycle_knn", _G, "expected"),
        Case("cknna", _G, "expected"),
        Case("rsa", _G, "population", large_n=3000),
        Case("cosine", _G, "population", large_n=400_000),
        Case("wasserstein", _G, "expected"),
        Case("maxsim_text_to_patch", _T, "population", large_n=200_000),
        Case("maxsim_patch_to_text", _T, "population", large_n=200_000),
    ]
}


def case_for(measure: str) -> Case:
    """``measure``'s known-answer case: its entry in :data:`CASES`, else E[θ̂_N] on the
    Gaussian pair (the token pair for a token measure) — an estimand every measure has, so
    a new measure is coverage-tested without a second file."""
    if measure in CASES:
        return CASES[measure]
    draw = token_pair if M.get_measure(measure).level == M.TOKENS else gaussian_pair
    return Case(measure, draw, "expected")


def _evaluate(measure: str, draw: Draw) -> float:
    x, y, mask = draw
    m, options = M.get_measure(measure), dict(case_for(measure).options)
    return m(x, y, mask, **options) if m.level == M.TOKENS else m(x, y, **options)


@cache
def _large_sample_value(measure: str, n: int) -> float:
    case = case_for(measure)
    return _evaluate(measure, case.draw(n, torch.Generator().manual_seed(12345)))


@cache
def _expected_value(measure: str, n: int) -> float:
    case = case_for(measure)
    g = torch.Generator().manual_seed(54321 + n)
    return float(np.mean([_evaluate(measure, case.draw(n, g)) for _ in range(MC_DRAWS)]))


def coverage(
    measure: str,
    n: int,
    repeats: int,
    resamples: int | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """How often ``measure``'s default interval covers its case's target over ``repeats``
    independent draws of ``n`` samples; with the mean width and the mean estimate."""
    from vilalign.analysis.defaults import DEFAULT_RESAMPLES

    case = case_for(measure)
    target = case.target(n)
    hits, widths, values = 0, [], []
    g = torch.Generator().manual_seed(seed * 1_000_003 + n)
    for rep in range(repeats):
        x, y, mask = case.draw(n, g)
        ci = S.confidence_interval(
            measure, x, y, resamples or DEFAULT_RESAMPLES, confidence, seed=rep, text_mask=mask,
            **dict(case.options),
        )  # fmt: skip
        hits += ci.low <= target <= ci.high
        widths.append(ci.high - ci.low)
        values.append(ci.value)
    return {
        "measure": measure,
        "interval": M.get_measure(measure).interval,
        "estimand": case.describe(),
        "n": n,
        "repeats": repeats,
        "target": target,
        "mean_estimate": float(np.mean(values)),
        "mean_width": float(np.mean(widths)),
        "coverage": hits / repeats,
    }

"""Statistics for alignment scores: permutation nulls, intervals, and averages over seeds.

* :func:`permutation_test` — shuffle which image row goes with which text row; the
  p-value, z-score and null-calibrated score say how far a score is above chance.
* :func:`max_permutation_test` — the same for "the best layer pair": the maximum over
  pairs is taken inside every permutation, or searching many pairs inflates the score;
  :func:`familywise_p_values` gives the same (single-step max-T) adjustment from nulls
  already drawn with one shared permutation sequence.
* :func:`confidence_interval` — the interval each measure registers (``Measure.interval``):
  a delete-d jackknife on half-samples drawn without replacement (no duplicated rows),
  centred on the estimate or re-centred by the jackknife's bias estimate. Its coverage is
  tested on known answers (docs/statistics.md has the table).
* :func:`bootstrap_ci` — the older paired percentile bootstrap / subsample interval,
  kept for callers that ask for it by name.
* :func:`measure_stats` — value, interval and null of one measure on one pair: what a
  row of the alignment table carries.
* :func:`aggregate_over_seeds` — mean, std and a t-interval across runs/seeds.

Every random draw comes from a ``torch.Generator`` (given, derived from a given numpy
``Generator``, or seeded from ``seed``), so results repeat exactly. Measures are looked
up in :mod:`vilalign.analysis.measures`; a plain callable ``fn(x, y, **kw) -> float``
works too (without the cache sharing).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch

from vilalign.analysis import measures as M
from vilalign.analysis.measures.registry import INTERVALS

log = logging.getLogger(__name__)

MeasureLike = M.Measure | str | Callable[..., float]

#: Share of the rows a "subsample" interval draws (without replacement) by default.
SUBSAMPLE_FRACTION = 0.5
#: Share of the rows each interval method keeps in a subsample.
FRACTIONS = {"subsample": SUBSAMPLE_FRACTION, "subsample_bc": SUBSAMPLE_FRACTION,
             "subsample_large": 0.8}  # fmt: skip
#: Quantiles of the permutation null that the table reports as the chance band.
NULL_BAND = (0.05, 0.95)


def value_limits(measure: MeasureLike | None) -> tuple[float, float]:
    """The range a measure's value cannot leave, as far as the registry knows it: up to
    its perfect score (``Measure.best``) on the side that is better — CKA, CCA, k-NN
    overlaps and correlations are at most 1, a distance at least 0. An interval (or a
    mean over seeds) is clipped to it: a limit past a perfect score is a value no model
    can have, and clipping never uncovers a value the measure can take. Unregistered
    measures and callables: no limit."""
    if isinstance(measure, str):
        try:
            measure = M.get_measure(measure)
        except ValueError:
            return -math.inf, math.inf
    if not isinstance(measure, M.Measure):
        return -math.inf, math.inf
    return (-math.inf, measure.best) if measure.higher_is_better else (measure.best, math.inf)


def clip_interval(
    value: float, low: float, high: float, limits: tuple[float, float]
) -> tuple[float, float]:
    """``(low, high)`` clipped to ``limits``, still containing ``value``."""
    return max(low, min(limits[0], value)), min(high, max(limits[1], value))


# --------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Resolved:
    """A measure reduced to: evaluate on views, which direction is better, best value."""

    evaluate: Callable[[M.View, M.View], float]
    higher_is_better: bool
    best: float
    resample: str
    name: str
    pairing_invariant: bool = False
    # The measure on many permutations at once, reusing what they share (the measures'
    # own ``permuted_values``); None: one evaluation per permutation.
    permuted: Callable[[M.View, M.View, Iterable[torch.Tensor]], np.ndarray] | None = None

    def null(self, vx: M.View, vy: M.View, perms: Iterable[torch.Tensor]) -> np.ndarray:
        if self.permuted is not None:
            return self.permuted(vx, vy, perms)
        return np.array([self.evaluate(vx, vy.permuted(p)) for p in perms], dtype=np.float64)


def _resolve(
    measure: MeasureLike, higher_is_better: bool | None, best: float | None, options: dict
) -> _Resolved:
    if isinstance(measure, str):
        measure = M.get_measure(measure)
    if isinstance(measure, M.Measure):
        m = measure
        if m.level != M.POOLED:
            raise ValueError(f"{m.name} is {m.level}-level: resampling needs pooled N×D rows")
        return _Resolved(
            lambda vx, vy: float(m.impl(M.Pair(vx, vy), **options)),
            m.higher_is_better if higher_is_better is None else higher_is_better,
            m.best if best is None else best,
            m.resample,
            m.name,
            m.pairing_invariant,
            lambda vx, vy, perms: m.permuted_values(vx, vy, perms, **options),
        )
    if not callable(measure):
        raise ValueError(f"measure must be a name, a Measure or a callable, got {measure!r}")
    fn = measure
    return _Resolved(
        lambda vx, vy: float(fn(vx.x, vy.x, **options)),
        True if higher_is_better is None else higher_is_better,
        1.0 if best is None else best,
        "bootstrap",
        getattr(fn, "__name__", "measure"),
    )


def _generator(
    seed: int | None, generator: torch.Generator | np.random.Generator | None
) -> torch.Generator:
    """The torch.Generator to draw from: the one given, one seeded from a numpy Generator
    (one draw from it), or one seeded from ``seed`` (fresh entropy when None)."""
    if isinstance(generator, np.random.Generator):
        return torch.Generator().manual_seed(int(generator.integers(0, 2**63 - 1)))
    if generator is not None:
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _view(x: torch.Tensor | M.View, name: str) -> M.View:
    return x if isinstance(x, M.View) else M.View(x, name)


def _check_count(value: int, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _exceed_count(null: np.ndarray, observed: float, higher_is_better: bool) -> int:
    # A tiny tolerance counts a null value that equals the observed one up to rounding as
    # "at least as extreme" (conservative), e.g. the identity permutation.
    tol = 1e-12 * max(1.0, abs(observed))
    if higher_is_better:
        return int((null >= observed - tol).sum())
    return int((null <= observed + tol).sum())


# --------------------------------------------------------------------------- permutation


@dataclass(frozen=True)
class PermutationResult:
    """Observed score against its permutation null.

    ``p_value`` = (1 + #null at least as aligned) / (B + 1) (Phipson & Smyth 2010: never
    0). ``z_score`` is signed so that positive means more aligned than chance.
    ``calibrated`` = (s − τ) / (s_best − τ) with τ the null's 95 % quantile (5 % when lower
    is better): 0 at the edge of chance, 1 at a perfect score, negative below chance.
    """

    observed: float
    null: np.ndarray
    p_value: float
    z_score: float
    tau: float
    calibrated: float
    higher_is_better: bool


def null_summary(
    observed: float,
    null: np.ndarray,
    higher_is_better: bool = True,
    best: float = 1.0,
    quantile: float = 0.95,
) -> PermutationResult:
    """p-value, z-score and null-calibrated score of ``observed`` against ``null`` draws."""
    null = np.asarray(null, dtype=np.float64)
    if null.ndim != 1 or null.size < 2:
        raise ValueError(f"null must hold at least 2 values, got shape {null.shape}")
    if not np.isfinite(null).all() or not math.isfinite(observed):
        raise ValueError("observed score and null must be finite")
    sign = 1.0 if higher_is_better else -1.0
    p = (1 + _exceed_count(null, observed, higher_is_better)) / (null.size + 1)
    sd = float(null.std(ddof=1))
    diff = sign * (observed - float(null.mean()))
    z = diff / sd if sd > 0 else (math.copysign(math.inf, diff) if diff != 0 else 0.0)
    tau = float(np.quantile(null, quantile if higher_is_better else 1 - quantile))
    calibrated = calibrated_score(observed, tau, best)
    return PermutationResult(observed, null, p, z, tau, calibrated, higher_is_better)


def calibrated_score(score: float, tau: float, best: float = 1.0) -> float:
    """(s − τ) / (s_best − τ): rescale so chance (τ) is 0 and a perfect score is 1.

    Works for distances too (best = 0, τ the null's lower quantile). Undefined when the
    null already reaches the best score; then NaN is returned and a warning logged.
    """
    if best == tau:
        log.warning("calibrated score undefined: the null quantile equals the best score")
        return float("nan")
    return (score - tau) / (best - tau)


def permutation_test(
    measure: MeasureLike,
    x: torch.Tensor | M.View,
    y: torch.Tensor | M.View,
    n_permutations: int = 1000,
    seed: int | None = None,
    generator: torch.Generator | np.random.Generator | None = None,
    higher_is_better: bool | None = None,
    best: float | None = None,
    quantile: float = 0.95,
    **options: Any,
) -> PermutationResult:
    """Permutation null of ``measure(x, y)``: rows of y are shuffled against rows of x.

    Cached Gram matrices of y are permuted rather than recomputed (see ``View.permuted``).
    ``options`` are the measure's keyword arguments (e.g. ``k``).
    """
    _check_count(n_permutations, "n_permutations")
    m = _resolve(measure, higher_is_better, best, options)
    if m.pairing_invariant:
        log.warning("%s ignores the pairing of rows: its permutation null is degenerate", m.name)
    vx, vy = _view(x, "x"), _view(y, "y")
    observed = m.evaluate(vx, vy)
    g = _generator(seed, generator)
    null = m.null(vx, vy, (torch.randperm(vy.n, generator=g) for _ in range(n_permutations)))
    return null_summary(observed, null, m.higher_is_better, m.best, quantile)


@dataclass(frozen=True)
class MaxPermutationResult:
    """The best score over layer pairs, against the null of the best score.

    ``values[i, j]`` is the observed score of (xs[i], ys[j]); ``best_pair`` its argbest;
    ``summary`` the p-value etc. of the best score against ``summary.null``, whose every
    draw is itself a best over all pairs under one shared permutation.
    """

    values: np.ndarray
    best_pair: tuple[int, int]
    summary: PermutationResult


def max_permutation_test(
    measure: MeasureLike,
    xs: Sequence[torch.Tensor | M.View],
    ys: Sequence[torch.Tensor | M.View],
    n_permutations: int = 1000,
    seed: int | None = None,
    generator: torch.Generator | np.random.Generator | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    higher_is_better: bool | None = None,
    best: float | None = None,
    **options: Any,
) -> MaxPermutationResult:
    """Permutation test of max over layer pairs, with the max taken inside the loop.

    Reporting the best of many layer pairs against a single-pair null overstates
    alignment (a maximum of many noisy scores is high by chance); here each permutation
    shuffles the samples once for all image layers and records the best pair score, so
    the null is that of the reported statistic. Default pairs: every (i, j).
    """
    _check_count(n_permutations, "n_permutations")
    m = _resolve(measure, higher_is_better, best, options)
    vxs = [_view(x, f"x[{i}]") for i, x in enumerate(xs)]
    vys = [_view(y, f"y[{j}]") for j, y in enumerate(ys)]
    if not vxs or not vys:
        raise ValueError("xs and ys must each hold at least one representation")
    pairs = (
        list(pairs)
        if pairs is not None
        else [(i, j) for i in range(len(xs)) for j in range(len(ys))]
    )
    pick = max if m.higher_is_better else min

    def best_over(views_y: list[M.View]) -> tuple[float, tuple[int, int], np.ndarray]:
        values = np.full((len(vxs), len(vys)), np.nan)
        for i, j in pairs:
            values[i, j] = m.evaluate(vxs[i], views_y[j])
        where = pick(pairs, key=lambda ij: values[ij])
        return float(values[where]), where, values

    observed, where, values = best_over(vys)
    g = _generator(seed, generator)
    start = g.get_state()
    draws = []
    for i, j in pairs:  # the same permutations for every pair: the generator is rewound
        g.set_state(start)
        perms = (torch.randperm(vys[0].n, generator=g) for _ in range(n_permutations))
        draws.append(m.null(vxs[i], vys[j], perms))
    null = np.max(draws, axis=0) if m.higher_is_better else np.min(draws, axis=0)
    return MaxPermutationResult(
        values, where, null_summary(observed, null, m.higher_is_better, m.best)
    )


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A confidence interval for ``value``, with the resampled scores it came from."""

    value: float
    low: float
    high: float
    confidence: float
    method: str
    samples: np.ndarray
    #: m/(N − m) of a half-sample interval (kept over left-out rows); NaN for bootstraps.
    ratio: float = float("nan")


def bootstrap_ci(
    measure: MeasureLike,
    x: torch.Tensor | M.View,
    y: torch.Tensor | M.View,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = None,
    generator: torch.Generator | np.random.Generator | None = None,
    method: str | None = None,
    fraction: float = SUBSAMPLE_FRACTION,
    **options: Any,
) -> Interval:
    """Paired confidence interval of ``measure(x, y)`` over samples.

    ``method`` defaults to the measure's ``resample`` attribute:

    * ``"bootstrap"``: rows drawn with replacement (x and y together), percentile
      interval (Efron & Tibshirani 1993, §13.3).
    * ``"subsample"``: ``fraction``·N rows drawn without replacement. Used for k-NN
      measures because a row drawn twice becomes its own copy's nearest neighbour and
      inflates every neighbourhood score (and likewise for unbiased HSIC, CCA and RSA,
      see ``Measure``). The spread of the size-m scores is rescaled to size N with the
      delete-d jackknife factor √(m/(N−m)) (Shao & Wu 1989; = 1 for half-samples), and
      centred on the full-sample value, since a size-m k-NN score has a different mean.
    """
    _check_count(n_resamples, "n_resamples", 2)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = _resolve(measure, None, None, options)
    method = method or m.resample
    vx, vy = _view(x, "x"), _view(y, "y")
    if vx.n != vy.n:
        raise ValueError(f"x and y must have the same N, got {vx.n} and {vy.n}")
    value = m.evaluate(vx, vy)
    g = _generator(seed, generator)
    n = vx.n
    if method == "bootstrap":
        draw: Callable[[], torch.Tensor] = lambda: torch.randint(0, n, (n,), generator=g)  # noqa: E731
    elif method == "subsample":
        size = round(fraction * n)
        if not 2 <= size < n:
            raise ValueError(f"fraction={fraction} of N={n} gives {size} rows; need 2 <= m < N")
        draw = lambda: torch.randperm(n, generator=g)[:size]  # noqa: E731
    else:
        raise ValueError(f"method must be 'bootstrap' or 'subsample', got {method!r}")
    samples = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = draw()
        samples[b] = m.evaluate(vx.subset(idx), vy.subset(idx))
    alpha = (1 - confidence) / 2
    if method == "bootstrap":
        low, high = np.quantile(samples, [alpha, 1 - alpha])
    else:
        scale = math.sqrt(size / (n - size))
        dev = np.quantile(samples - samples.mean(), [alpha, 1 - alpha]) * scale
        low, high = value + dev[0], value + dev[1]
    return Interval(value, float(low), float(high), confidence, method, samples)


# --------------------------------------------------------------------------- registered intervals


def half_sample_size(n: int, fraction: float = SUBSAMPLE_FRACTION) -> int:
    """Rows in each subsample of a "subsample" interval over ``n`` rows."""
    return round(fraction * n)


def interval_min_samples(measure: M.Measure, options: dict | None = None) -> int:
    """The fewest samples N for which ``measure`` can give its registered interval.

    Each subsample must itself be a sample the measure is defined on (k-NN measures
    need more than k rows, unbiased HSIC 4), and at least 2 rows must be left out.
    """
    need = measure.min_samples(options)
    fraction = FRACTIONS[measure.interval]
    n = need + 2
    while half_sample_size(n, fraction) < need or n - half_sample_size(n, fraction) < 2:
        n += 1
    return n


def check_interval_possible(
    measure: M.Measure, n: int, options: dict | None = None, what: str = "an interval"
) -> None:
    """Raise, naming the measure and the numbers, when N is too small for its interval."""
    need = interval_min_samples(measure, options)
    if n < need:
        k = {**measure.defaults, **(options or {})}.get("k")
        why = f"k={k} neighbours" if isinstance(k, int) else f"at least {measure.min_samples()}"
        size = half_sample_size(n, FRACTIONS[measure.interval])
        raise ValueError(
            f"{measure.name}: {what} needs at least {need} samples (each subsample of "
            f"{size} rows must allow {why}); got N = {n}"
        )


@dataclass(frozen=True)
class _Sampled:
    """One measure on one pair, as a function of which rows (samples) it sees."""

    name: str
    n: int
    at: Callable[[torch.Tensor | None], float]  # None: every row


def _sampled(measure: MeasureLike, x: Any, y: Any, text_mask: Any, options: dict) -> _Sampled:
    """Pooled measures see View subsets (Gram caches are re-indexed, not recomputed); token
    measures see the same samples' tokens, with the text mask taken along."""
    m = M.get_measure(measure) if isinstance(measure, str) else measure
    if isinstance(m, M.Measure) and m.level == M.TOKENS:

        def tokens_at(idx: torch.Tensor | None) -> float:
            if idx is None:
                return m(x, y, text_mask, **options)
            mask = None if text_mask is None else text_mask[idx.to(text_mask.device)]
            return m(x[idx.to(x.device)], y[idx.to(y.device)], mask, **options)

        return _Sampled(m.name, x.shape[0], tokens_at)
    r = _resolve(m, None, None, options)
    vx, vy = _view(x, "x"), _view(y, "y")
    if vx.n != vy.n:
        raise ValueError(f"x and y must have the same N, got {vx.n} and {vy.n}")

    def pooled_at(idx: torch.Tensor | None) -> float:
        return r.evaluate(vx, vy) if idx is None else r.evaluate(vx.subset(idx), vy.subset(idx))

    return _Sampled(r.name, vx.n, pooled_at)


def confidence_interval(
    measure: MeasureLike,
    x: torch.Tensor | M.View,
    y: torch.Tensor | M.View,
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int | None = None,
    generator: torch.Generator | np.random.Generator | None = None,
    method: str | None = None,
    text_mask: torch.Tensor | None = None,
    fraction: float | None = None,
    **options: Any,
) -> Interval:
    """The measure's registered interval (``Measure.interval``) of ``measure(x, y)``.

    Both methods draw ``n_resamples`` half-samples of the rows without replacement (a row
    drawn twice would be its own nearest neighbour, put a diagonal term back into the
    unbiased HSIC, and inflate biased CKA) and rescale their spread to size N with the
    delete-d jackknife factor √(m/(N−m)) (Shao & Wu 1989):

    * ``"subsample"``: centred on the estimate θ̂; targets E[θ̂_N], which is the population
      value for the (nearly) unbiased measures;
    * ``"subsample_bc"``: re-centred by the half-sample jackknife bias estimate
      (m/(N−m))·(mean of half-sample values − θ̂): an O(1/N) bias towards the population
      value (biased HSIC, CCA fits) is removed, so the interval targets the population.
    * ``"subsample_large"``: as ``"subsample"``, keeping 80 % of the rows (``fraction``
      overrides the method's share).

    The limits are θ̃ ± t·s with s the rescaled spread (a Student t with n_resamples − 1
    degrees of freedom, as s is estimated from them), widened if needed to contain θ̂:
    an interval never excludes its own estimate. Token-level measures take the text
    states as ``x``, the image states as ``y`` and ``text_mask``; samples are resampled.
    """
    _check_count(n_resamples, "n_resamples", 2)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    registered = M.get_measure(measure) if isinstance(measure, str) else measure
    if method is None:
        method = registered.interval if isinstance(registered, M.Measure) else "subsample"
    if method not in INTERVALS:
        raise ValueError(f"method must be one of {INTERVALS}, got {method!r}")
    sampled = _sampled(registered, x, y, text_mask, options)
    n = sampled.n
    if isinstance(registered, M.Measure) and fraction is None:
        check_interval_possible(registered, n, options)
    size = half_sample_size(n, FRACTIONS[method] if fraction is None else fraction)
    if not 2 <= size <= n - 2:
        raise ValueError(f"{sampled.name}: N = {n} is too few rows for half-sample intervals")
    value = sampled.at(None)
    samples = _subsample_values(sampled, size, n_resamples, _generator(seed, generator))
    ratio = size / (n - size)
    centre, half = _jackknife(value, samples, ratio, confidence, method)
    low, high = min(centre - half, value), max(centre + half, value)
    low, high = clip_interval(value, low, high, value_limits(registered))
    return Interval(value, low, high, confidence, method, samples, ratio)


def _subsample_values(sampled: _Sampled, size: int, count: int, g: torch.Generator) -> np.ndarray:
    """The measure on ``count`` subsamples of ``size`` rows.

    A subsample on which the measure is undefined (every row the same — a few images
    asked about many times —, a degenerate kernel) is drawn again: it says nothing
    about the spread, only that such a subsample exists. More failures than successes
    mean N is too small for this measure's interval: an error naming it.
    """
    values: list[float] = []
    failures = 0
    while len(values) < count:
        try:
            values.append(sampled.at(torch.randperm(sampled.n, generator=g)[:size]))
        except ValueError as err:
            failures += 1
            if failures > count:
                raise ValueError(
                    f"{sampled.name}: {failures} of {failures + len(values)} subsamples of "
                    f"{size} rows (of N = {sampled.n}) are degenerate ({err}); collect more "
                    "samples or set resamples to 0"
                ) from None
    if failures:
        log.info("%s: %d degenerate subsamples drawn again", sampled.name, failures)
    return np.asarray(values)


def _jackknife(
    value: float, samples: np.ndarray, ratio: float, confidence: float, method: str
) -> tuple[float, float]:
    """Centre and half-width of a delete-d jackknife interval; ``ratio`` = m/(N − m)."""
    centre = value
    if method == "subsample_bc":
        centre = value - ratio * (float(samples.mean()) - value)
    spread = math.sqrt(ratio) * float(samples.std(ddof=1))
    return centre, float(scipy.stats.t.ppf((1 + confidence) / 2, samples.size - 1)) * spread


@dataclass(frozen=True)
class ReferenceComparison:
    """A reference (e.g. the architecture at initialisation, mean over init seeds) and
    the difference trained − reference, each with its interval."""

    reference: Interval
    delta: Interval


def reference_comparison(
    trained: Interval,
    references: Sequence[Interval],
    limits: tuple[float, float] = (-math.inf, math.inf),
) -> ReferenceComparison:
    """Intervals of the mean reference value and of trained − reference.

    All intervals must come from :func:`confidence_interval` with the same seed on the
    same samples, so that their half-samples are the same rows: the difference is then
    resampled as one paired statistic, and what the two models share (which samples were
    drawn) cancels. With several references (init seeds), the spread between seeds adds
    to the half-width: t_{S−1}·sd/√S, combined in quadrature with the sampling part, so
    the interval targets the difference from the *expected* model at initialisation.
    """
    if not references:
        raise ValueError("reference_comparison needs at least one reference interval")
    every = [trained, *references]
    if len({(i.method, i.samples.size, i.ratio, i.confidence) for i in every}) != 1:
        raise ValueError("trained and reference intervals must share method, size and resamples")
    values = np.array([r.value for r in references])
    ref = _combined(
        float(values.mean()), np.mean([r.samples for r in references], axis=0), values, trained
    )
    low, high = clip_interval(ref.value, ref.low, ref.high, limits)
    ref = dataclasses.replace(ref, low=low, high=high)
    delta = _combined(
        trained.value - ref.value, trained.samples - ref.samples, trained.value - values, trained
    )
    return ReferenceComparison(ref, delta)


def _seed_half(values: np.ndarray, like: Interval) -> float:
    if values.size < 2:
        return 0.0
    t = float(scipy.stats.t.ppf((1 + like.confidence) / 2, values.size - 1))
    return t * float(values.std(ddof=1)) / math.sqrt(values.size)


def _combined(value: float, samples: np.ndarray, seeds: np.ndarray, like: Interval) -> Interval:
    """A jackknife interval of ``value`` widened by the spread of its per-seed values."""
    centre, half = _jackknife(value, samples, like.ratio, like.confidence, like.method)
    half = math.hypot(half, _seed_half(seeds, like))
    low, high = min(centre - half, value), max(centre + half, value)
    return Interval(value, low, high, like.confidence, like.method, samples, like.ratio)


# --------------------------------------------------------------------------- table rows


def familywise_p_values(
    observed: Sequence[float], nulls: Sequence[np.ndarray], higher_is_better: bool = True
) -> np.ndarray:
    """Single-step max-T adjusted p-values over a family (Westfall & Young 1993, §2.6).

    ``nulls[l]`` must be drawn with the *same* permutation sequence for every member l
    (e.g. one seed for every layer), so that column b of the stacked nulls is one shuffle
    of the samples seen by all members; its maximum is then a draw of the null of "the
    best member". Member l's adjusted p is (1 + #{b: max_l' null_l'[b] ≥ observed_l}) /
    (B + 1): the p-value of the best layer when the best of the family is what is named,
    and a valid family-wise p-value for every member.
    """
    stacked = np.vstack([np.asarray(n, dtype=np.float64) for n in nulls])
    if stacked.shape[0] != len(observed):
        raise ValueError(f"{len(observed)} observed values but {stacked.shape[0]} nulls")
    extreme = stacked.max(axis=0) if higher_is_better else stacked.min(axis=0)
    counts = [_exceed_count(extreme, float(o), higher_is_better) for o in observed]
    return (1 + np.asarray(counts, dtype=np.float64)) / (extreme.size + 1)


def _token_null(
    m: M.Measure, text: torch.Tensor, image: torch.Tensor, mask: Any, b: int, g: torch.Generator
) -> np.ndarray:
    """Token measures: sample i's text tokens against sample π(i)'s image tokens."""
    n = text.shape[0]
    return np.array([m(text, image[torch.randperm(n, generator=g)], mask) for _ in range(b)])


@dataclass(frozen=True)
class MeasureStats:
    """One measure on one pair: its value, registered interval and permutation null.

    :meth:`columns` gives what a row of the alignment table carries: value, ci_low,
    ci_high, p_value, null_mean (the chance level), null_low/null_high (the null's 5 and
    95 % quantiles), calibrated ((s − τ)/(best − τ), 0 at chance and 1 at a perfect score)
    and the interval's method. Whatever was not computed is NaN.
    """

    measure: str
    value: float
    interval: Interval | None = None
    null: PermutationResult | None = None

    def columns(self) -> dict[str, float | str]:
        nan = float("nan")
        out: dict[str, float | str] = {"value": self.value}
        ci = self.interval
        out.update(ci_low=ci.low if ci else nan, ci_high=ci.high if ci else nan)
        out["interval"] = ci.method if ci else ""
        if self.null is None:
            out.update(p_value=nan, null_mean=nan, null_low=nan, null_high=nan, calibrated=nan)
            return out
        low, high = np.quantile(self.null.null, NULL_BAND)
        out.update(
            p_value=self.null.p_value,
            null_mean=float(self.null.null.mean()),
            null_low=float(low),
            null_high=float(high),
            calibrated=self.null.calibrated,
        )
        return out


def measure_stats(
    measure: str | M.Measure,
    x: torch.Tensor | M.View,
    y: torch.Tensor | M.View,
    permutations: int = 0,
    resamples: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    text_mask: torch.Tensor | None = None,
    **options: Any,
) -> MeasureStats:
    """Value, interval (``resamples`` > 0) and null (``permutations`` > 0) of a measure.

    One ``seed`` for the null and the interval: called with the same seed on every layer
    of a model (same N), the nulls share one permutation sequence, which is what
    :func:`familywise_p_values` needs. A measure that ignores the pairing of rows
    (Wasserstein) gets no null: shuffling the pairing cannot move it.
    """
    m = M.get_measure(measure) if isinstance(measure, str) else measure
    if m.level == M.TOKENS:
        value = m(x, y, text_mask, **options)
    else:
        value = float(m.impl(M.Pair(x, y), **options))
    ci = null = None
    if resamples:
        ci = confidence_interval(
            m, x, y, resamples, confidence, seed=seed, text_mask=text_mask, **options
        )
    if permutations and not m.pairing_invariant:
        if m.level == M.TOKENS:
            draws = _token_null(m, x, y, text_mask, permutations, _generator(seed, None))
            null = null_summary(value, draws, m.higher_is_better, m.best)
        else:
            null = permutation_test(m, x, y, permutations, seed=seed, **options)
    return MeasureStats(m.name, value, ci, null)


# --------------------------------------------------------------------------- seeds


ID_COLUMNS = ("run", "seed")
VALUE_COLUMNS = (
    "value", "ci_low", "ci_high", "p_value", "null_mean", "null_low", "null_high", "calibrated",
    "p_familywise", "interval", "n_samples", "init_value", "init_low", "init_high", "delta",
    "delta_low", "delta_high",
)  # fmt: skip


def seed_interval(
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    confidence: float = 0.95,
    limits: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float, float]:
    """Mean over seeds and its interval: (mean, low, high).

    One seed: its own interval. Several: the Student-t half-width of the seeds' spread,
    t·sd/√S, combined in quadrature with the mean of their own half-widths, because the
    seeds were measured on the *same* samples — their spread shows the training
    randomness, not the sampling of the samples, which does not average out over seeds.
    Missing per-seed intervals leave only the seeds' part. All NaN when no value is finite.
    ``limits``: the range the mean cannot leave (:func:`value_limits` of the measure).
    """
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.asarray(lows, dtype=np.float64), np.asarray(highs, dtype=np.float64)
    keep = np.isfinite(v)
    v, lo, hi = v[keep], lo[keep], hi[keep]
    if v.size == 0:
        return (float("nan"),) * 3
    if v.size == 1:
        return float(v[0]), *clip_interval(float(v[0]), float(lo[0]), float(hi[0]), limits)
    t = float(scipy.stats.t.ppf((1 + confidence) / 2, v.size - 1))
    seeds = t * float(v.std(ddof=1)) / math.sqrt(v.size)
    halves = (hi - lo) / 2
    sampling = float(np.nanmean(halves)) if np.isfinite(halves).any() else 0.0
    half = math.hypot(seeds, sampling)
    mean = float(v.mean())
    return (mean, *clip_interval(mean, mean - half, mean + half, limits))


def aggregate_over_seeds(
    table: pd.DataFrame,
    by: Sequence[str] | None = None,
    value: str = "value",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean, std, n and an interval of ``value`` over runs/seeds.

    ``by`` defaults to every column except run, seed and the value/statistics columns,
    so rows of the same (epoch, dataset, layer, view, measure) across seeds are pooled.
    The interval is :func:`seed_interval`'s: the seeds' Student-t interval, widened by
    the rows' own sampling intervals when the table has them (``ci_low``/``ci_high``
    of ``value``). With a single seed std is NaN and the interval is the row's own (NaN
    without one). ``chance`` and ``calibrated`` are the seeds' mean null mean and
    null-calibrated score, when the table has them.
    """
    if value not in table.columns:
        raise ValueError(f"column {value!r} not in the table (columns: {list(table.columns)})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if by is None:
        by = [c for c in table.columns if c not in ID_COLUMNS + VALUE_COLUMNS]
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise ValueError(f"group columns not in the table: {missing}")
    has_ci = value == "value" and {"ci_low", "ci_high"} <= set(table.columns)
    rows = []
    for key, part in table.groupby(list(by), dropna=False, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        v = part[value].dropna()
        row.update(mean=v.mean(), std=v.std(), n=int(v.count()))
        nan = np.full(len(part), np.nan)
        lows = part["ci_low"] if has_ci else nan
        highs = part["ci_high"] if has_ci else nan
        limits = value_limits(row.get("measure") if value == "value" else None)
        _, row["ci_low"], row["ci_high"] = seed_interval(
            part[value], lows, highs, confidence, limits
        )
        for name, col in (("chance", "null_mean"), ("calibrated", "calibrated")):
            if col in part:
                row[name] = part[col].mean()
        rows.append(row)
    return pd.DataFrame(rows)

"""Statistics for alignment scores: permutation nulls, intervals, and averages over seeds.

* :func:`permutation_test` — shuffle which image row goes with which text row; the
  p-value, z-score and null-calibrated score say how far a score is above chance.
* :func:`max_permutation_test` — the same for "the best layer pair": the maximum over
  pairs is taken inside every permutation, or searching many pairs inflates the score.
* :func:`bootstrap_ci` — paired resampling of samples (rows of x and y together);
  subsampling without replacement for measures that duplicated rows would bias.
* :func:`aggregate_over_seeds` — mean, std and a t-interval across runs/seeds.

Every random draw comes from a ``torch.Generator`` (given, derived from a given numpy
``Generator``, or seeded from ``seed``), so results repeat exactly. Measures are looked
up in :mod:`vilalign.analysis.measures`; a plain callable ``fn(x, y, **kw) -> float``
works too (without the cache sharing).
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

MeasureLike = M.Measure | str | Callable[..., float]

#: Share of the rows a "subsample" interval draws (without replacement) by default.
SUBSAMPLE_FRACTION = 0.5


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


# --------------------------------------------------------------------------- seeds


ID_COLUMNS = ("run", "seed")
VALUE_COLUMNS = ("value", "ci_low", "ci_high", "p_value")


def aggregate_over_seeds(
    table: pd.DataFrame,
    by: Sequence[str] | None = None,
    value: str = "value",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean, std, n and a Student-t interval of ``value`` over runs/seeds.

    ``by`` defaults to every column except run, seed and the value/interval/p columns,
    so rows of the same (epoch, dataset, layer, view, measure) across seeds are pooled.
    With a single seed std and the interval are NaN (nothing to estimate them from).
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
    grouped = table.groupby(list(by), dropna=False, sort=False)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    t = scipy.stats.t.ppf((1 + confidence) / 2, np.maximum(out["n"] - 1, 1))
    half = np.where(out["n"] > 1, t * out["std"] / np.sqrt(out["n"]), np.nan)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out

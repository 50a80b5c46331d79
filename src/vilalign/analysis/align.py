"""From collected representations to the tidy alignment table.

For every collected layer that carries both streams (the fusion layers) and every
pooled view, the text and image representations of the same samples are compared
with each requested measure; token-level measures run on the token view. Each value
comes with what :mod:`vilalign.analysis.stats` gives it (when the spec asks, which it
does by default): the measure's registered interval, its permutation null (p-value,
chance level, 5–95 % null band, null-calibrated score) and a family-wise p-value over
the fusion layers, the one to quote for "the best layer". Measures that are biased at
this N and width say so (:func:`bias_warnings`). With reference representations (the
same architecture at initialisation, one or several seeds, on the same samples), every
row also carries the reference's value and the difference trained − reference, each
with its interval. A second function compares every text layer with every image layer
(encoder layers included) for the layer×layer heat map, and :func:`best_layer_pair`
names its best pair with a p-value that accounts for the search over pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vilalign.analysis import measures as M
from vilalign.analysis import stats as S
from vilalign.analysis.collect import Representations
from vilalign.analysis.report import COLUMNS
from vilalign.analysis.spec import DEFAULT_MEASURES, StatsOptions

log = logging.getLogger(__name__)

_NO_STATS = StatsOptions(permutations=0, resamples=0)

__all__ = [
    "DEFAULT_MEASURES",
    "RunInfo",
    "StatsOptions",
    "alignment_table",
    "best_layer_pair",
    "bias_warnings",
    "layer_matrix",
]


@dataclass(frozen=True)
class RunInfo:
    """What identifies one table: the run, its seed, the epoch and the dataset."""

    run: str = ""
    seed: int = 0
    epoch: int | None = None
    dataset: str = ""


def _row(
    info: RunInfo,
    layer: str,
    kind: str,
    view: str,
    measure: str,
    value: float,
    ci: tuple[float, float] | None = None,
    p: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One table row; columns not given are NaN (numbers) or empty (text)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, float("nan"))
    row.update(
        run=info.run, seed=info.seed, epoch=info.epoch, dataset=info.dataset, layer=layer,
        layer_kind=kind, view=view, measure=measure, value=value, interval="",
    )  # fmt: skip
    if ci:
        row["ci_low"], row["ci_high"] = ci
    if p is not None:
        row["p_value"] = p
    row.update(extra)
    return row


def _of_level(names: Sequence[str], level: str) -> list[M.Measure]:
    """The measures of ``names`` that are of ``level``, in order (unknown names raise)."""
    measures = [M.get_measure(name) for name in names]
    return [m for m in measures if m.level == level]


def _pooled_measures(names: Sequence[str], dx: int, dy: int) -> list[str]:
    out = []
    for measure in _of_level(names, M.POOLED):
        if measure.equal_dims and dx != dy:
            log.info(
                "skipping %s: the streams have different widths (%d, %d)", measure.name, dx, dy
            )
            continue
        out.append(measure.name)
    return out


def bias_warnings(reps: Representations, measures: Sequence[str]) -> list[str]:
    """One message per requested measure that is biased at these N and widths.

    Each names the bias and the fix (``Measure.bias``); the widest fusion layer decides.
    """
    pooled = [v for v in reps.views if v != "tokens"]
    if not pooled or not reps.fusion_layers:
        return []
    n = len(reps.ids)
    dims = [
        (reps.rows(layer.name, "text", pooled[0]).shape[1],
         reps.rows(layer.name, "image", pooled[0]).shape[1])
        for layer in reps.fusion_layers
    ]  # fmt: skip
    dx, dy = max(d[0] for d in dims), max(d[1] for d in dims)
    out = []
    for m in _of_level(measures, M.POOLED):
        if m.bias is not None and m.bias.applies(n, dx, dy):
            out.append(m.bias.message(m.name, n, dx, dy))
    return out


# --------------------------------------------------------------------------- one pair


def _pair_stats(
    x: Any,
    y: Any,
    names: Sequence[str],
    stats: StatsOptions,
    options: dict[str, dict[str, Any]],
    text_mask: torch.Tensor | None = None,
) -> dict[str, S.MeasureStats]:
    """Each measure's value, interval and null on one pair (shared View caches).

    The spec checked ``n_samples`` against every interval before collection; a split
    with fewer samples than that leaves a measure whose interval N cannot carry without
    one (a warning, not a failure at the end of an epoch).
    """
    p, c, seed = stats.permutations, stats.confidence, stats.seed
    n = x.n if isinstance(x, M.View) else int(x.shape[0])
    out = {}
    for name in names:
        r = stats.resamples
        if r and n < S.interval_min_samples(M.get_measure(name), options.get(name)):
            log.warning("%s: only %d samples collected, too few for its interval: none", name, n)
            r = 0
        out[name] = S.measure_stats(name, x, y, p, r, c, seed, text_mask, **options.get(name, {}))
    return out


def _layer_stats(
    reps: Representations,
    layer: str,
    view: str,
    measures: Sequence[str],
    stats: StatsOptions,
    options: dict[str, dict[str, Any]],
) -> dict[str, S.MeasureStats]:
    if view == "tokens":
        text, image = reps.get(layer, "text", "tokens"), reps.get(layer, "image", "tokens")
        names = [m.name for m in _of_level(measures, M.TOKENS)]
        return _pair_stats(text, image, names, stats, options, reps.text_mask)
    # Named views of the stored rows (read block by block when spilled to disk).
    x = M.View(reps.rows(layer, "text", view), f"{layer}/text/{view}")
    y = M.View(reps.rows(layer, "image", view), f"{layer}/image/{view}")
    names = _pooled_measures(measures, x.d, y.d)
    return _pair_stats(x, y, names, stats, options)


def _familywise(rows: list[dict[str, Any]], nulls: dict[int, np.ndarray]) -> None:
    """Fill ``p_familywise`` per (view, measure) over the fusion layers (in place).

    Every layer's null was drawn with the same seed, hence the same permutations.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        if i in nulls:
            groups.setdefault((row["view"], row["measure"]), []).append(i)
    for (_, measure), members in groups.items():
        better = M.get_measure(measure).higher_is_better
        observed = [rows[i]["value"] for i in members]
        adjusted = S.familywise_p_values(observed, [nulls[i] for i in members], better)
        for i, p in zip(members, adjusted, strict=True):
            rows[i]["p_familywise"] = float(p)


def alignment_table(
    reps: Representations,
    measures: Sequence[str] = DEFAULT_MEASURES,
    info: RunInfo = RunInfo(),
    stats: StatsOptions = _NO_STATS,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    references: Sequence[Representations] = (),
) -> pd.DataFrame:
    """The tidy table: one row per (fusion layer, view, measure), see ``report.COLUMNS``.

    ``references``: the same samples through the same architecture at initialisation
    (one per init seed); each row then carries init_value, delta = value − init_value and
    their intervals (needs ``stats.resamples``).
    """
    options = options or {}
    for name in measures:
        M.get_measure(name)  # fail early, naming the unknown measure
    for message in bias_warnings(reps, measures):
        log.warning(message)
    rows: list[dict[str, Any]] = []
    nulls: dict[int, np.ndarray] = {}
    for layer in tqdm(reps.fusion_layers, desc="measuring", unit="layer", disable=not progress):
        for view in reps.views:
            found = _layer_stats(reps, layer.name, view, measures, stats, options)
            refs = [_layer_stats(r, layer.name, view, found, _intervals_only(stats), options)
                    for r in references]  # fmt: skip
            for name, result in found.items():
                if result.null is not None:
                    nulls[len(rows)] = result.null.null
                extra = {**result.columns(), "n_samples": len(reps.ids)}
                if refs:
                    extra.update(_reference_columns(result, [r[name] for r in refs]))
                rows.append(_row(info, layer.name, layer.kind, view, name, **extra))
    _familywise(rows, nulls)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _intervals_only(stats: StatsOptions) -> StatsOptions:
    return StatsOptions(0, stats.resamples, stats.confidence, stats.seed)


def _reference_columns(
    trained: S.MeasureStats, references: Sequence[S.MeasureStats]
) -> dict[str, float]:
    """init_value/low/high and delta/low/high of one row (NaN limits without intervals)."""
    if trained.interval is None or any(r.interval is None for r in references):
        init = float(np.mean([r.value for r in references]))
        nan = float("nan")
        return {"init_value": init, "init_low": nan, "init_high": nan,
                "delta": trained.value - init, "delta_low": nan, "delta_high": nan}  # fmt: skip
    ref = S.reference_comparison(
        trained.interval, [r.interval for r in references], S.value_limits(trained.measure)
    )
    return {
        "init_value": ref.reference.value, "init_low": ref.reference.low,
        "init_high": ref.reference.high, "delta": ref.delta.value,
        "delta_low": ref.delta.low, "delta_high": ref.delta.high,
    }  # fmt: skip


# --------------------------------------------------------------------------- layer × layer


def _layer_views(reps: Representations, view: str) -> tuple[dict[str, M.View], dict[str, M.View]]:
    """Per-layer views of both streams, wrapped once (their Gram caches are shared)."""

    def views(stream: str) -> dict[str, M.View]:
        return {
            i.name: M.View(reps.rows(i.name, stream, view), f"{i.name}/{stream}/{view}")
            for i in reps.layers
            if stream in i.streams
        }

    return views("text"), views("image")


def layer_matrix(
    reps: Representations,
    measure: str = "cka_linear",
    view: str = "cls",
    options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Measure between every text layer (rows) and every image layer (columns).

    Encoder layers come first, then fusion layers, in depth order. Per-layer views are
    wrapped once so their Gram matrices are reused across the whole row/column. The
    measure's name is the frame's ``attrs["measure"]`` (the heat map names its scale).
    """
    m = M.get_measure(measure)
    text_views, image_views = _layer_views(reps, view)
    table = pd.DataFrame(index=list(text_views), columns=list(image_views), dtype=float)
    for t, tv in text_views.items():
        for i, iv in image_views.items():
            table.loc[t, i] = m(tv, iv, **(options or {}))
    table.index.name, table.columns.name = "text_layer", "image_layer"
    table.attrs.update(measure=measure, view=view)
    return table


@dataclass(frozen=True)
class BestPair:
    """The best (text layer, image layer) pair of a layer matrix, with a family-wise p."""

    measure: str
    view: str
    text_layer: str
    image_layer: str
    value: float
    p_familywise: float
    permutations: int

    def sentence(self) -> str:
        return (
            f"best layer pair by {self.measure} ({self.view}): text {self.text_layer} × "
            f"image {self.image_layer} = {self.value:.3f}, family-wise p = "
            f"{self.p_familywise:.3g} (max over all pairs inside each of "
            f"{self.permutations} permutations)"
        )


def best_layer_pair(
    reps: Representations,
    measure: str,
    view: str = "cls",
    permutations: int = 200,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> BestPair:
    """The best text × image layer pair and its p-value against the null of the best pair
    (:func:`~vilalign.analysis.stats.max_permutation_test`: searching many pairs makes
    the best one high by chance; its null takes the best inside every permutation)."""
    text_views, image_views = _layer_views(reps, view)
    result = S.max_permutation_test(
        measure, list(text_views.values()), list(image_views.values()), permutations,
        seed=seed, **(options or {}),
    )  # fmt: skip
    i, j = result.best_pair
    return BestPair(
        measure, view, list(text_views)[i], list(image_views)[j],
        result.summary.observed, result.summary.p_value, permutations,
    )  # fmt: skip

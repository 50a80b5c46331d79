"""From collected representations to the tidy alignment table.

For every collected layer that carries both streams (the fusion layers) and every
pooled view, the text and image representations of the same samples are compared
with each requested measure; token-level measures run on the token view. Optional
permutation nulls (p-values) and bootstrap/subsample intervals come from
:mod:`vilalign.analysis.stats`. A second function compares every text layer with
every image layer (encoder layers included) for the layer×layer heat map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from vilalign.analysis import measures as M
from vilalign.analysis.collect import Representations
from vilalign.analysis.report import COLUMNS
from vilalign.analysis.spec import DEFAULT_MEASURES, StatsOptions

log = logging.getLogger(__name__)

_NO_STATS = StatsOptions()

__all__ = [
    "DEFAULT_MEASURES",
    "RunInfo",
    "StatsOptions",
    "alignment_table",
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
) -> dict[str, Any]:
    return {
        "run": info.run,
        "seed": info.seed,
        "epoch": info.epoch,
        "dataset": info.dataset,
        "layer": layer,
        "layer_kind": kind,
        "view": view,
        "measure": measure,
        "value": value,
        "ci_low": ci[0] if ci else float("nan"),
        "ci_high": ci[1] if ci else float("nan"),
        "p_value": p if p is not None else float("nan"),
    }


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


def _with_stats(
    x: torch.Tensor | M.View,
    y: torch.Tensor | M.View,
    name: str,
    value: float,
    stats: StatsOptions,
    options: dict[str, Any],
) -> tuple[tuple[float, float] | None, float | None]:
    if not (stats.permutations or stats.resamples):
        return None, None
    from vilalign.analysis import stats as S

    measure = M.get_measure(name)
    ci = p = None
    if stats.permutations and not measure.pairing_invariant:
        null = S.permutation_test(
            measure, x, y, n_permutations=stats.permutations, seed=stats.seed, **options
        )
        p = null.p_value
    if stats.resamples:
        interval = S.bootstrap_ci(
            measure,
            x,
            y,
            n_resamples=stats.resamples,
            confidence=stats.confidence,
            seed=stats.seed,
            **options,
        )
        ci = (interval.low, interval.high)
    return ci, p


def alignment_table(
    reps: Representations,
    measures: Sequence[str] = DEFAULT_MEASURES,
    info: RunInfo = RunInfo(),
    stats: StatsOptions = _NO_STATS,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The tidy table: one row per (fusion layer, view, measure)."""
    options = options or {}
    for name in measures:
        M.get_measure(name)  # fail early, naming the unknown measure
    rows: list[dict[str, Any]] = []
    layers = reps.fusion_layers
    for layer in tqdm(layers, desc="measuring", unit="layer", disable=not progress):
        for view in reps.views:
            if view == "tokens":
                rows += _token_rows(reps, layer.name, layer.kind, measures, info)
                continue
            # Named views: errors say which layer; their caches serve the statistics too.
            x = M.View(reps.rows(layer.name, "text", view), f"{layer.name}/text/{view}")
            y = M.View(reps.rows(layer.name, "image", view), f"{layer.name}/image/{view}")
            names = _pooled_measures(measures, x.d, y.d)
            values = M.compute_measures(x, y, names, {n: options[n] for n in names if n in options})
            for name, value in values.items():
                ci, p = _with_stats(x, y, name, value, stats, options.get(name, {}))
                rows.append(_row(info, layer.name, layer.kind, view, name, value, ci, p))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _token_rows(
    reps: Representations, layer: str, kind: str, measures: Sequence[str], info: RunInfo
) -> list[dict[str, Any]]:
    text = reps.get(layer, "text", "tokens")
    image = reps.get(layer, "image", "tokens")
    rows = []
    for measure in _of_level(measures, M.TOKENS):
        value = measure(text, image, text_mask=reps.text_mask)
        rows.append(_row(info, layer, kind, "tokens", measure.name, value))
    return rows


def layer_matrix(
    reps: Representations,
    measure: str = "cka_linear",
    view: str = "cls",
    options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Measure between every text layer (rows) and every image layer (columns).

    Encoder layers come first, then fusion layers, in depth order. Per-layer views are
    wrapped once so their Gram matrices are reused across the whole row/column.
    """
    m = M.get_measure(measure)
    text_layers = [i.name for i in reps.layers if "text" in i.streams]
    image_layers = [i.name for i in reps.layers if "image" in i.streams]
    text_views = {n: M.View(reps.rows(n, "text", view), f"{n}/text/{view}") for n in text_layers}
    image_views = {
        n: M.View(reps.rows(n, "image", view), f"{n}/image/{view}") for n in image_layers
    }
    table = pd.DataFrame(index=text_layers, columns=image_layers, dtype=float)
    for t in text_layers:
        for i in image_layers:
            table.loc[t, i] = m(text_views[t], image_views[i], **(options or {}))
    table.index.name, table.columns.name = "text_layer", "image_layer"
    return table

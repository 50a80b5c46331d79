"""The tidy alignment table, its pictures, and the answer in words.

The table has exactly the columns of :data:`COLUMNS`, one row per (run, seed, epoch,
dataset, layer, view, measure). ``layer`` is the layer's name (e.g. ``fusion.3``), in
depth order of first appearance; ``layer_kind`` is ``coattention``, ``self_attention``,
``single_stream`` or ``encoder``; the statistics (interval, null, family-wise p, the
at-init reference; docs/statistics.md) are NaN when not computed, and a table written
before a column existed reads with it NaN (:data:`ADDED`).

Plots are written as PNG with matplotlib's Agg canvas (``Figure`` objects, never
pyplot), so nothing needs a display. Each ``figure_*`` function returns the Figure (for
tests and notebooks); each ``plot_*`` function writes it and returns the path. Figures
compare: several models on one panel with shared axes, each line with its interval
band and its permutation-null band, epoch 0 beside the last epoch, layer matrices of
one measure on one named colour scale. :func:`text_report`, :func:`best_layer_sentence`
and :func:`answer_sentence` put the result in words with numbers and intervals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vilalign.config import COATTENTION
from vilalign.io import safe_name, write_atomic

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "run",
    "seed",
    "epoch",
    "dataset",
    "layer",
    "layer_kind",
    "view",
    "measure",
    "value",
    "ci_low",
    "ci_high",
    "p_value",
    # Added by issue 14 (tables written before lack them: read as NaN / empty).
    "null_mean",
    "null_low",
    "null_high",
    "calibrated",
    "p_familywise",
    "interval",
    "n_samples",
    "init_value",
    "init_low",
    "init_high",
    "delta",
    "delta_low",
    "delta_high",
)
_TEXT = ("run", "dataset", "layer", "layer_kind", "view", "measure", "interval")
_FLOAT = (
    "value", "ci_low", "ci_high", "p_value", "null_mean", "null_low", "null_high",
    "calibrated", "p_familywise", "init_value", "init_low", "init_high", "delta",
    "delta_low", "delta_high",
)  # fmt: skip
_INT = ("seed", "epoch", "n_samples")
#: The columns every table has had; a table without one of them is refused.
REQUIRED: tuple[str, ...] = COLUMNS[: COLUMNS.index("p_value") + 1]
#: Columns added later: a table written before them reads with NaN (empty for text).
ADDED: tuple[str, ...] = COLUMNS[len(REQUIRED) :]
#: What make_table fills in when rows leave them out (statistics not computed).
_OPTIONAL = ("ci_low", "ci_high", "p_value", *ADDED)

NullBand = Mapping[str, tuple[float, float]] | pd.DataFrame


# --------------------------------------------------------------------------- table


def validate_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and coerce types; returns a copy in :data:`COLUMNS` order.

    A missing or unexpected column raises ``ValueError`` naming it; so does a value that
    is not a number or a p-value outside [0, 1].
    """
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(table).__name__}")
    table = _with_optional(table)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"alignment table is missing column(s): {', '.join(missing)}")
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        raise ValueError(f"alignment table has unexpected column(s): {', '.join(map(str, extra))}")
    out = table.loc[:, list(COLUMNS)].copy()
    for col in _TEXT:
        out[col] = out[col].astype("string")
    out["interval"] = out["interval"].fillna("")
    for col in _FLOAT:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
        except (ValueError, TypeError) as err:
            raise ValueError(f"column {col!r} must be numeric: {err}") from None
    for col in _INT:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("Int64")
        except (ValueError, TypeError) as err:
            raise ValueError(f"column {col!r} must hold integers (or be empty): {err}") from None
    for col in ("p_value", "p_familywise"):
        p = out[col].dropna()
        if ((p < 0) | (p > 1)).any():
            raise ValueError(f"column {col!r} has values outside [0, 1]")
    return out.reset_index(drop=True)


def _with_optional(table: pd.DataFrame, columns: Sequence[str] = ADDED) -> pd.DataFrame:
    """The table with each of ``columns`` it lacks added (NaN, or empty text)."""
    absent = [c for c in columns if c not in table.columns]
    if not absent:
        return table
    table = table.copy()
    for col in absent:
        table[col] = "" if col in _TEXT else np.nan
    return table


def make_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """A validated table from row dicts; the optional columns (intervals, nulls, the
    reference) default to NaN."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame(columns=list(COLUMNS))
    return validate_table(_with_optional(frame, _OPTIONAL))


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a validated table as CSV or Parquet, chosen by the suffix; returns the path."""
    path = Path(path)
    table = validate_table(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
    elif path.suffix == ".parquet":
        write_atomic(path, lambda tmp: table.to_parquet(tmp, index=False))
    else:
        raise ValueError(f"table path must end in .csv or .parquet, got {path.name!r}")
    log.info("wrote %d rows to %s", len(table), path)
    return path


def write_tables(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``stem.csv`` and ``stem.parquet``; returns both paths."""
    stem = Path(stem)
    return [write_table(table, stem.with_suffix(s)) for s in (".csv", ".parquet")]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet alignment table and validate it."""
    path = Path(path)
    if path.suffix == ".csv":
        # Text columns keep "" as "" (the default run/dataset name); only the numeric
        # columns read empty cells as missing.
        missing = {c: ["", "NaN", "nan", "<NA>"] for c in (*_FLOAT, *_INT)}
        frame = pd.read_csv(
            path, dtype={c: "string" for c in _TEXT}, keep_default_na=False, na_values=missing
        )
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"table path must end in .csv or .parquet, got {path.name!r}")
    return validate_table(frame)


# --------------------------------------------------------------------------- helpers


def _layer_order(table: pd.DataFrame) -> list[str]:
    """Layers in order of first appearance (the collector writes them in depth order)."""
    return list(dict.fromkeys(table["layer"].astype(str)))


def _coattention_layers(table: pd.DataFrame) -> set[str]:
    return set(table.loc[table["layer_kind"] == COATTENTION, "layer"].astype(str))


def _select(table: pd.DataFrame, measure: str, **equal: object) -> pd.DataFrame:
    table = validate_table(table)
    rows = table[table["measure"] == measure]
    for col, val in equal.items():
        if val is not None:
            rows = rows[rows[col] == val]
    if rows.empty:
        extra = ", ".join(f"{k}={v}" for k, v in equal.items() if v is not None)
        raise ValueError(f"no rows for measure {measure!r}" + (f" with {extra}" if extra else ""))
    return rows


def _summarise(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One point per key: the value and its interval, the null band, the at-init value.

    With one row per key the row's own interval is used. With several (seeds), the mean
    over seeds with :func:`~vilalign.analysis.stats.seed_interval` — the spread between
    seeds and the rows' own sampling intervals (they share the samples) combined — so
    neither the seeds nor the samples are hidden.
    """
    from vilalign.analysis.stats import seed_interval, value_limits

    out = []
    for key, part in rows.groupby(keys, sort=False, dropna=False):
        measures = part["measure"].unique() if "measure" in part else ()
        limits = value_limits(measures[0] if len(measures) == 1 else None)
        record = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        record["n"] = len(part)
        for name, (value, low, high) in {
            "": ("value", "ci_low", "ci_high"), "init_": ("init_value", "init_low", "init_high"),
        }.items():  # fmt: skip
            mean, lo, hi = seed_interval(part[value], part[low], part[high], limits=limits)
            record.update({f"{name}value": mean, f"{name}lo": lo, f"{name}hi": hi})
        for col in ("null_low", "null_high", "null_mean", "p_familywise"):
            record[col] = float(part[col].mean()) if col in part else float("nan")
        out.append(record)
    return pd.DataFrame(out)


def _null_bounds(null: NullBand, layers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(null, pd.DataFrame):
        missing = [c for c in ("layer", "low", "high") if c not in null.columns]
        if missing:
            raise ValueError(f"null band table is missing column(s): {', '.join(missing)}")
        null = {str(r.layer): (r.low, r.high) for r in null.itertuples()}
    lows = np.array([null.get(layer, (np.nan, np.nan))[0] for layer in layers], dtype=float)
    highs = np.array([null.get(layer, (np.nan, np.nan))[1] for layer in layers], dtype=float)
    return lows, highs


def _mark_coattention(ax, layers: Sequence[str], coattention: set[str]) -> int:
    """Shade the x positions of co-attention layers; returns how many were shaded."""
    count = 0
    for i, layer in enumerate(layers):
        if layer in coattention:
            ax.axvspan(
                i - 0.4, i + 0.4, color="0.5", alpha=0.12, lw=0,
                label="co-attention" if count == 0 else None,
            )  # fmt: skip
            count += 1
    return count


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".png":
        raise ValueError(f"plot path must end in .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    log.info("wrote %s", path)
    return path


def safe_filename(text: str) -> str:
    """A file-name-safe version of a measure or view name."""
    return safe_name(text, fallback="plot")


# --------------------------------------------------------------------------- plots


#: Line styles by view (a view keeps its style in every figure); colours by model.
VIEW_STYLES = {"cls": "-", "mean": "--", "tokens": ":"}


def _last_epoch(rows: pd.DataFrame, epoch: int | None, by: str | None) -> pd.DataFrame:
    """Rows of ``epoch``; None: each model's own last epoch (early stopping differs)."""
    if epoch is not None:
        return rows[rows["epoch"] == epoch]
    if not rows["epoch"].notna().any():
        return rows
    groups = rows.groupby(by, sort=False) if by else [(None, rows)]
    return pd.concat(part[part["epoch"] == part["epoch"].max()] for _, part in groups)


def _band(ax, xs, lo, hi, colour, **kwargs) -> None:
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, color=colour, lw=0, **kwargs)


def _draw_line(ax, part: pd.DataFrame, pos: Mapping[str, int], label: str, style: dict) -> None:
    """One model × view: its values with interval band, null band and dotted null mean,
    and (when the table has it) the at-init value with its band."""
    part = part.assign(x=part["layer"].map(pos)).sort_values("x")
    xs = part["x"].to_numpy()
    (line,) = ax.plot(xs, part["value"], marker="o", ms=4, label=label, **style)
    colour = line.get_color()
    _band(ax, xs, part["lo"], part["hi"], colour, alpha=0.22)
    if part["null_high"].notna().any():
        _band(ax, xs, part["null_low"], part["null_high"], colour, alpha=0.10, hatch="///")
        ax.plot(xs, part["null_mean"], ":", color=colour, lw=1, label=f"{label}: chance")
    if part["init_value"].notna().any():
        ax.plot(xs, part["init_value"], marker="x", ls=(0, (1, 1)), color=colour, lw=1,
                label=f"{label}: at init")  # fmt: skip
        _band(ax, xs, part["init_lo"], part["init_hi"], colour, alpha=0.08)


def figure_across_layers(
    table: pd.DataFrame,
    measure: str,
    epoch: int | None = None,
    dataset: str | None = None,
    null: NullBand | None = None,
    title: str | None = None,
    by: str | None = None,
    views: Sequence[str] | None = None,
    ax=None,
) -> Figure:
    """One measure across layers in one panel; co-attention layers shaded.

    ``by`` (e.g. ``"run"``): one colour per model/baseline, all on the same axes; views
    keep their line style (:data:`VIEW_STYLES`). Each line has its interval band, and,
    when the table carries nulls, its permutation-null band (hatched, 5–95 %) and chance
    level (dotted); an at-init reference (``init_value``) is drawn as a dotted line with
    crosses. Several seeds: mean with :func:`_summarise`'s interval. ``epoch``: default
    each model's last. ``null`` gives one extra grey band per layer (layer → (low, high),
    or a DataFrame with layer, low, high). ``ax``: draw into this axis (shared figures).
    """
    rows = _select(table, measure, dataset=dataset)
    if views is not None:
        rows = rows[rows["view"].isin(list(views))]
    start = rows[rows["epoch"] == 0]
    rows = _last_epoch(rows, epoch, by)
    layers = _layer_order(rows)
    pos = {layer: i for i, layer in enumerate(layers)}
    if ax is None:
        fig = Figure(figsize=(max(7.5, 0.7 * len(layers) + 5), 4.2))
        ax = fig.add_subplot()
    _mark_coattention(ax, layers, _coattention_layers(rows))
    if null is not None:
        lo, hi = _null_bounds(null, layers)
        ax.fill_between(range(len(layers)), lo, hi, color="0.6", alpha=0.35, label="null 5–95 %")
    keys = [by, "view", "layer"] if by else ["view", "layer"]
    summary = _with_epoch_zero(_summarise(rows, keys), start, rows, keys)
    colours = _colours(summary[by] if by else summary["view"])
    for key, part in summary.groupby(keys[:-1], sort=False):
        group, view = key if by else (None, key[0] if isinstance(key, tuple) else key)
        style = {"ls": VIEW_STYLES.get(str(view), "-")} if by else {}
        style["color"] = colours[str(group if by else view)]
        label = f"{group} ({view})" if by else str(view)
        _draw_line(ax, part, pos, label, style)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel(measure)
    epochs = sorted({int(e) for e in rows["epoch"].dropna()})
    suffix = f" (epoch {epochs[0]})" if len(epochs) == 1 else ""
    ax.set_title(title or f"{measure} across layers{suffix}")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def _with_epoch_zero(
    summary: pd.DataFrame, start: pd.DataFrame, shown: pd.DataFrame, keys: list[str]
) -> pd.DataFrame:
    """Epoch 0 (the model before training) as the "at init" reference of a later epoch."""
    if start.empty or not (shown["epoch"] > 0).any():
        return summary
    zero = _summarise(start, keys)[[*keys, "value", "lo", "hi"]]
    zero = zero.rename(columns={"value": "init_value", "lo": "init_lo", "hi": "init_hi"})
    return summary.drop(columns=["init_value", "init_lo", "init_hi"]).merge(
        zero, on=keys, how="left"
    )


def _colours(names: Iterable[object]) -> dict[str, str]:
    """One colour per name, in order of appearance (tab10)."""
    unique = list(dict.fromkeys(str(n) for n in names))
    return {n: f"C{i % 10}" for i, n in enumerate(unique)}


def plot_across_layers(table: pd.DataFrame, measure: str, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_across_layers` to ``path`` (PNG); returns the path."""
    return _save(figure_across_layers(table, measure, **kwargs), path)


def figure_over_epochs(
    table: pd.DataFrame,
    measure: str,
    view: str | None = None,
    dataset: str | None = None,
    title: str | None = None,
    by: str | None = None,
) -> Figure:
    """One measure over epochs, a line per layer with its band (co-attention layers solid,
    others dashed); integer epochs from the first measured (0: before training).

    ``by`` (e.g. ``"run"``): one panel per model, side by side on a shared y-axis.
    ``view`` defaults to the first view in the table.
    """
    rows = _select(table, measure, dataset=dataset)
    rows = rows[rows["epoch"].notna()]
    if rows.empty:
        raise ValueError(f"no rows with an epoch for measure {measure!r}")
    view = view or str(rows["view"].iloc[0])
    rows = rows[rows["view"] == view]
    if rows.empty:
        raise ValueError(f"no rows for measure {measure!r} and view {view!r}")
    groups = list(rows.groupby(by, sort=False)) if by else [(None, rows)]
    fig = Figure(figsize=(5.2 * len(groups) + 0.8, 3.9))
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (group, part) in zip(axes, groups, strict=True):
        _epoch_panel(ax, part, _coattention_layers(rows))
        ax.set_title(f"{group}" if by else (title or f"{measure} over epochs ({view})"))
    axes[0].set_ylabel(f"{measure} ({view})")
    if by:
        fig.suptitle(title or f"{measure} over epochs ({view} view)", fontsize=11)
    fig.tight_layout()
    return fig


def _epoch_panel(ax, rows: pd.DataFrame, coattention: set[str]) -> None:
    from matplotlib.ticker import MaxNLocator

    summary = _summarise(rows, ["layer", "epoch"])
    for layer in _layer_order(rows):
        part = summary[summary["layer"] == layer].sort_values("epoch")
        style = "-" if layer in coattention else "--"
        tag = " (co-attn)" if layer in coattention else ""
        xs = part["epoch"].to_numpy(dtype=float)
        (line,) = ax.plot(xs, part["value"], style, marker="o", ms=3, label=f"{layer}{tag}")
        _band(ax, xs, part["lo"], part["hi"], line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=min(0.0, float(summary["epoch"].min())) - 0.2)
    ax.set_xlabel("epoch (0: before training)")
    ax.legend(fontsize="x-small", ncol=2, loc="best")


def plot_over_epochs(table: pd.DataFrame, measure: str, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_over_epochs` to ``path`` (PNG); returns the path."""
    return _save(figure_over_epochs(table, measure, **kwargs), path)


def figure_layer_heatmap(
    matrix: pd.DataFrame,
    coattention: Iterable[str] = (),
    title: str | None = None,
    annotate: bool | None = None,
    measure: str | None = None,
    limits: tuple[float, float] | None = None,
    ax=None,
    colorbar: bool = True,
) -> Figure:
    """Heat map of a text-layer × image-layer matrix (rows: text, columns: image).

    ``matrix`` is what ``align.layer_matrix`` returns. Layers named in ``coattention``
    get a ``*`` and bold tick labels. Cells are annotated when the grid is small.
    ``measure`` names the colour bar (default: ``matrix.attrs["measure"]``); ``limits``
    fixes the colour scale, so that several maps of one measure compare (see
    :func:`figure_layer_heatmaps`).
    """
    if not isinstance(matrix, pd.DataFrame) or matrix.empty:
        raise ValueError("matrix must be a non-empty DataFrame (text layers × image layers)")
    values = matrix.to_numpy(dtype=float)
    coattention = set(coattention)
    own = ax is None
    if own:
        fig = Figure(figsize=(1.8 + 0.55 * values.shape[1], 1.0 + 0.45 * values.shape[0]))
        ax = fig.add_subplot()
    vmin, vmax = limits if limits is not None else (np.nanmin(values), np.nanmax(values))
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(measure or str(matrix.attrs.get("measure", "")))
    _heatmap_ticks(ax, matrix, coattention)
    if annotate if annotate is not None else values.size <= 144:
        mid = (vmin + vmax) / 2
        for (i, j), v in np.ndenumerate(values):
            if math.isfinite(v):  # dark text on the bright end of viridis
                colour = "k" if v > mid else "w"
                label = _number(v, ".2f")
                ax.text(j, i, label, ha="center", va="center", fontsize=6, color=colour)
    ax.set_title(title or "text layer × image layer" + (" (* co-attention)" if coattention else ""))
    if own:
        ax.figure.tight_layout()
    return ax.figure


def _heatmap_ticks(ax, matrix: pd.DataFrame, coattention: set[str]) -> None:
    def labels(names: Sequence[object]) -> list[str]:
        return [f"{n}*" if str(n) in coattention else str(n) for n in names]

    ax.set_xticks(range(matrix.shape[1]), labels(matrix.columns), rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), labels(matrix.index))
    for text in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if text.get_text().endswith("*"):
            text.set_fontweight("bold")
    ax.set_xlabel(str(matrix.columns.name or "image layer"))
    ax.set_ylabel(str(matrix.index.name or "text layer"))


def plot_layer_heatmap(matrix: pd.DataFrame, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_layer_heatmap` to ``path`` (PNG); returns the path."""
    return _save(figure_layer_heatmap(matrix, **kwargs), path)


def figure_layer_heatmaps(
    matrices: Mapping[str, pd.DataFrame],
    measure: str,
    coattention: Mapping[str, Iterable[str]] | None = None,
) -> Figure:
    """Several layer matrices of one measure side by side on ONE colour scale, named.

    The scale spans every matrix's values, so equal colours mean equal values across
    models; the colour bar carries the measure's name.
    """
    if not matrices:
        raise ValueError("figure_layer_heatmaps needs at least one matrix")
    values = np.concatenate([m.to_numpy(dtype=float).ravel() for m in matrices.values()])
    limits = (float(np.nanmin(values)), float(np.nanmax(values)))
    first = next(iter(matrices.values()))
    fig = Figure(figsize=(1.5 + (0.55 * first.shape[1] + 1.2) * len(matrices),
                          1.3 + 0.45 * first.shape[0]), layout="constrained")  # fmt: skip
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        figure_layer_heatmap(
            matrix, (coattention or {}).get(name, ()), title=name, measure=measure,
            limits=limits, ax=ax, colorbar=False,
        )  # fmt: skip
    image = axes[-1].images[0]
    fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02).set_label(measure)
    fig.suptitle(f"{measure}: text layer × image layer (one colour scale; * co-attention)")
    return fig


def plot_report(
    table: pd.DataFrame,
    out_dir: str | Path,
    matrix: pd.DataFrame | None = None,
    nulls: Mapping[str, NullBand] | None = None,
) -> list[Path]:
    """Every plot for a table: per measure across layers (and over epochs when there are
    several), plus the layer×layer heat map if ``matrix`` is given. Returns the paths.

    ``nulls`` maps a measure name to its null band (see :func:`figure_across_layers`).
    """
    table = validate_table(table)
    out_dir = Path(out_dir)
    nulls = nulls or {}
    by = "run" if table["run"].nunique() > 1 else None  # several models: one colour each
    paths = []
    for measure in dict.fromkeys(table["measure"].astype(str)):
        name = safe_filename(measure)
        paths.append(
            plot_across_layers(
                table, measure, out_dir / f"layers_{name}.png", null=nulls.get(measure), by=by
            )
        )
        rows = table[table["measure"] == measure]
        if rows["epoch"].nunique() > 1:
            paths.append(plot_over_epochs(table, measure, out_dir / f"epochs_{name}.png", by=by))
    if matrix is not None:
        measure = str(matrix.attrs.get("measure", ""))
        title = f"{measure} ({matrix.attrs.get('view', '')}): text layer × image layer"
        paths.append(
            plot_layer_heatmap(
                matrix,
                out_dir / "layer_heatmap.png",
                coattention=_coattention_layers(table),
                title=title if measure else None,
            )
        )
    return paths


# --------------------------------------------------------------------------- text


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.412 [0.380, 0.444]``; the value alone when there is no interval."""
    if not math.isfinite(value):
        return "–"
    if not (math.isfinite(low) and math.isfinite(high)):
        return _number(value, f".{digits}f")
    return f"{_number(value, f'.{digits}f')} [{_number(low, f'.{digits}f')}, " + (
        f"{_number(high, f'.{digits}f')}]"
    )


def _number(value: float, fmt: str = ".3f") -> str:
    """``value`` formatted; "–" when missing, and never "-0.000"."""
    if not math.isfinite(value):
        return "–"
    text = format(value, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def layer_block(rows: pd.DataFrame) -> pd.DataFrame:
    """One (run, view, measure)'s rows as printable strings, a row per layer."""
    out = pd.DataFrame({"layer": rows["layer"].astype(str), "kind": rows["layer_kind"]})
    out["value [95% interval]"] = [
        format_interval(r.value, r.ci_low, r.ci_high) for r in rows.itertuples()
    ]
    out["chance"] = [_number(v) for v in rows["null_mean"]]
    out["calibrated"] = [_number(v, ".2f") for v in rows["calibrated"]]
    out["p"] = [_number(v, ".3g") for v in rows["p_value"]]
    out["p (family-wise)"] = [_number(v, ".3g") for v in rows["p_familywise"]]
    if rows["init_value"].notna().any():
        out["at init"] = [
            format_interval(r.init_value, r.init_low, r.init_high) for r in rows.itertuples()
        ]
        out["trained - init"] = [
            format_interval(r.delta, r.delta_low, r.delta_high) for r in rows.itertuples()
        ]
        out["share at init"] = [
            _share(r.init_value, r.value, r.null_mean, _p(r)) for r in rows.itertuples()
        ]
    return out.reset_index(drop=True)


def _share(init: float, trained: float, chance: float = 0.0, p: float = 0.0) -> str:
    """How much of the trained value's distance above chance is already there at
    initialisation, in percent; "–" when the trained value is not above chance (p ≥ 0.05)
    or either value is missing."""
    chance = chance if math.isfinite(chance) else 0.0
    above = trained - chance
    if not (math.isfinite(init) and math.isfinite(trained)) or above == 0 or p >= 0.05:
        return "–"
    return f"{100 * (init - chance) / above:.0f} %"


def _p(row: object) -> float:
    """The row's family-wise p-value, else its own, else 0 (no null: not tested)."""
    for name in ("p_familywise", "p_value"):
        value = float(getattr(row, name) if not isinstance(row, pd.Series) else row[name])
        if math.isfinite(value):
            return value
    return 0.0


def best_layer_sentence(rows: pd.DataFrame) -> str:
    """The best layer of one (run, view, measure) in words, with its family-wise p-value
    and, when known, how much of it is present at initialisation."""
    from vilalign.analysis.measures import get_measure

    m = str(rows["measure"].iloc[0])
    better = get_measure(m).higher_is_better if m in _measure_names() else True
    best = rows.loc[rows["value"].idxmax() if better else rows["value"].idxmin()]
    text = (
        f"best layer by {m} ({best['view']} view): {best['layer']} = "
        f"{format_interval(best['value'], best['ci_low'], best['ci_high'])}"
    )
    if math.isfinite(best["null_mean"]):
        text += f", chance {best['null_mean']:.3f}"
    if math.isfinite(best["p_familywise"]):
        text += f", family-wise p = {best['p_familywise']:.3g} over {len(rows)} layers"
    if math.isfinite(best["init_value"]):
        init = format_interval(best["init_value"], best["init_low"], best["init_high"])
        delta = format_interval(best["delta"], best["delta_low"], best["delta_high"])
        share = _share(best["init_value"], best["value"], best["null_mean"], _p(best))
        text += (
            f"; at initialisation {init} ({share} of its height above chance), "
            f"trained - init {delta}"
        )
    return text


def _measure_names() -> set[str]:
    from vilalign.analysis.measures import REGISTRY

    return set(REGISTRY)


def text_report(
    table: pd.DataFrame, warnings: Sequence[str] = (), best_pair: object | None = None
) -> str:
    """The tables ``vilalign analyse`` prints: per (view, measure) a row per layer with the
    value, its interval, the chance level, p-values and the at-init reference; then the
    best layer in words; warnings first, the best layer pair last."""
    table = validate_table(table)
    parts = [f"warning: {w}" for w in warnings]
    for (run, view, measure), rows in table.groupby(["run", "view", "measure"], sort=False):
        method = str(rows["interval"].iloc[0]) or "none"
        head = f"{measure}, {view} view" + (f", {run}" if run else "")
        parts.append(f"\n{head} (interval: {method}; chance: permutation-null mean)")
        parts.append(layer_block(rows).to_string(index=False))
        parts.append("-> " + best_layer_sentence(rows))
    if best_pair is not None:
        parts.append("\n" + best_pair.sentence())  # type: ignore[attr-defined]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the answer


def epoch_change(table: pd.DataFrame, measure: str, layer: str, view: str) -> pd.DataFrame:
    """Per model (``run``): ``measure`` at ``layer`` before training (epoch 0) and at its
    last epoch, each the mean over seeds with its interval, their difference, the chance
    level (the permutation null's mean) and whether the layer is a co-attention layer.

    The difference is taken per seed (same seed, same samples) and its interval combines
    the seeds' spread with the two rows' sampling half-widths in quadrature (conservative:
    the shared samples make the two estimates positively correlated).
    """
    from vilalign.analysis.stats import seed_interval, value_limits

    rows = _select(table, measure, layer=layer, view=view)
    limits = value_limits(measure)
    rows = rows[rows["epoch"].notna()]
    out = []
    for run, part in rows.groupby("run", sort=False):
        first, last = int(part["epoch"].min()), int(part["epoch"].max())
        start, end = part[part["epoch"] == first], part[part["epoch"] == last]
        paired = start.merge(end, on="seed", suffixes=("_0", "_1"))
        half = np.hypot(
            (paired["ci_high_0"] - paired["ci_low_0"]) / 2,
            (paired["ci_high_1"] - paired["ci_low_1"]) / 2,
        )
        diff = paired["value_1"] - paired["value_0"]
        record = {
            "run": run, "first_epoch": first, "last_epoch": last, "seeds": len(paired),
            "coattention": bool((part["layer_kind"] == COATTENTION).any()),
            "chance": float(part["null_mean"].mean()),
        }  # fmt: skip
        for name, frame in (("init", start), ("trained", end)):
            record.update(zip((name, f"{name}_low", f"{name}_high"),
                              seed_interval(frame["value"], frame["ci_low"], frame["ci_high"],
                                            limits=limits),
                              strict=True))  # fmt: skip
        record.update(zip(("delta", "delta_low", "delta_high"),
                          seed_interval(diff, diff - half, diff + half), strict=True))  # fmt: skip
        out.append(record)
    return pd.DataFrame(out)


def _change(row: pd.Series) -> tuple[int, str, str]:
    """(direction −1/0/+1 by the difference's interval, at-init text, trained text)."""
    moved = row["delta_low"] > 0 or row["delta_high"] < 0
    direction = 0 if not moved else (1 if row["delta"] > 0 else -1)
    init = format_interval(row["init"], row["init_low"], row["init_high"])
    trained = format_interval(row["trained"], row["trained_low"], row["trained_high"])
    return direction, init, trained


def _acts_on(row: pd.Series, subject: str) -> str:
    """ "raises <subject> from A at init to B after training" (or lowers, or leaves)."""
    direction, init, trained = _change(row)
    if direction == 0:
        return f"leaves {subject} at {trained} after training ({init} at init, no clear change)"
    verb = "raises" if direction > 0 else "lowers"
    return f"{verb} {subject} from {init} at init to {trained} after training"


def _moves(row: pd.Series) -> str:
    """ "rises from A at init to B after training" (or falls, or stays at)."""
    direction, init, trained = _change(row)
    if direction == 0:
        return f"stays at {trained} ({init} at init, no clear change)"
    verb = "rises" if direction > 0 else "falls"
    return f"{verb} from {init} at init to {trained} after training"


def answer_sentence(changes: pd.DataFrame, measure: str, layer: str, view: str) -> str:
    """The answer in one sentence, from :func:`epoch_change`'s rows.

    With one model whose ``layer`` is a co-attention layer and one whose is not:
    "co-attention (vilbert) raises <measure> at <layer> from A [..] at init to B [..]
    after training; without co-attention (no_coattention) it stays at C [..]; chance D".
    Otherwise one clause per model. Intervals are 95 %, over seeds and samples.
    """
    if changes.empty:
        return f"no {measure} rows at {layer} ({view} view) with epochs to compare"
    where = f"{measure} at {layer} ({view} view)"
    chance = float(changes["chance"].mean())
    tail = f"; chance {chance:.3f}" if math.isfinite(chance) else ""
    tail += f" ({int(changes['seeds'].min())} seeds per model; 95 % intervals)"
    co, plain = changes[changes["coattention"]], changes[~changes["coattention"]]
    if len(co) == 1 and len(plain) == 1:
        a, b = co.iloc[0], plain.iloc[0]
        return (
            f"co-attention ({a['run']}) {_acts_on(a, where)}; without co-attention "
            f"({b['run']}) it {_moves(b)}{tail}"
        )
    parts = [f"{r['run']} {_moves(r)}" for _, r in changes.iterrows()]
    return f"{where}: " + "; ".join(parts) + tail

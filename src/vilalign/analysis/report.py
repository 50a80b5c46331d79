"""The tidy alignment table and its pictures.

The table has exactly the columns of :data:`COLUMNS`, one row per (run, seed, epoch,
dataset, layer, view, measure). ``layer`` is the layer's name (e.g. ``fusion.3``), in
depth order of first appearance; ``layer_kind`` is ``coattention``, ``self_attention``,
``single_stream`` or ``encoder``; ``ci_low``/``ci_high``/``p_value`` are NaN when no
interval or null was computed.

Plots are written as PNG with matplotlib's Agg canvas (``Figure`` objects, never
pyplot), so nothing needs a display. Each ``figure_*`` function returns the Figure (for
tests and notebooks); each ``plot_*`` function writes it and returns the path.
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
)
_TEXT = ("run", "dataset", "layer", "layer_kind", "view", "measure")
_FLOAT = ("value", "ci_low", "ci_high", "p_value")
_OPTIONAL = ("ci_low", "ci_high", "p_value")  # filled with NaN by make_table

NullBand = Mapping[str, tuple[float, float]] | pd.DataFrame


# --------------------------------------------------------------------------- table


def validate_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and coerce types; returns a copy in :data:`COLUMNS` order.

    A missing or unexpected column raises ``ValueError`` naming it; so does a value that
    is not a number or a p-value outside [0, 1].
    """
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"alignment table is missing column(s): {', '.join(missing)}")
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        raise ValueError(f"alignment table has unexpected column(s): {', '.join(map(str, extra))}")
    out = table.loc[:, list(COLUMNS)].copy()
    for col in _TEXT:
        out[col] = out[col].astype("string")
    for col in _FLOAT:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
        except (ValueError, TypeError) as err:
            raise ValueError(f"column {col!r} must be numeric: {err}") from None
    for col in ("seed", "epoch"):
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("Int64")
        except (ValueError, TypeError) as err:
            raise ValueError(f"column {col!r} must hold integers (or be empty): {err}") from None
    p = out["p_value"].dropna()
    if ((p < 0) | (p > 1)).any():
        raise ValueError("column 'p_value' has values outside [0, 1]")
    return out.reset_index(drop=True)


def make_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """A validated table from row dicts; ci_low, ci_high and p_value default to NaN."""
    frame = pd.DataFrame(list(rows))
    for col in _OPTIONAL:
        if col not in frame.columns:
            frame[col] = np.nan
    if frame.empty:
        frame = pd.DataFrame(columns=list(COLUMNS))
    return validate_table(frame)


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
        missing = {c: ["", "NaN", "nan", "<NA>"] for c in (*_FLOAT, "seed", "epoch")}
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
    """One point per key: the value and its interval; across seeds, their mean and range.

    With one row per key the row's own ci_low/ci_high are used; with several (seeds or
    runs) the mean is plotted with the min–max of the values, so nothing is hidden.
    """
    grouped = rows.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(
        value=("value", "mean"),
        n=("value", "size"),
        lo=("value", "min"),
        hi=("value", "max"),
        ci_low=("ci_low", "first"),
        ci_high=("ci_high", "first"),
    ).reset_index()
    single = out["n"] == 1
    out.loc[single, "lo"] = out.loc[single, "ci_low"]
    out.loc[single, "hi"] = out.loc[single, "ci_high"]
    return out


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
                i - 0.4, i + 0.4, color="tab:orange", alpha=0.15, lw=0,
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


def figure_across_layers(
    table: pd.DataFrame,
    measure: str,
    epoch: int | None = None,
    dataset: str | None = None,
    null: NullBand | None = None,
    title: str | None = None,
) -> Figure:
    """One measure across layers, a line per view; co-attention layers shaded.

    ``epoch`` defaults to the last epoch in the table. ``null`` gives a band per layer
    (mapping layer → (low, high), or a DataFrame with layer, low, high), e.g. the 5–95 %
    quantiles of a permutation null; it is drawn in grey behind the lines.
    """
    rows = _select(table, measure, dataset=dataset)
    if epoch is None and rows["epoch"].notna().any():
        epoch = int(rows["epoch"].max())
    if epoch is not None:
        rows = rows[rows["epoch"] == epoch]
    layers = _layer_order(rows)
    pos = {layer: i for i, layer in enumerate(layers)}
    fig = Figure(figsize=(max(5.0, 0.6 * len(layers) + 2), 3.6))
    ax = fig.add_subplot()
    _mark_coattention(ax, layers, _coattention_layers(rows))
    if null is not None:
        lo, hi = _null_bounds(null, layers)
        ax.fill_between(range(len(layers)), lo, hi, color="0.6", alpha=0.35, label="null 5–95 %")
    for view, part in _summarise(rows, ["view", "layer"]).groupby("view", sort=False):
        xs = part["layer"].map(pos).to_numpy()
        order = np.argsort(xs)
        xs, ys = xs[order], part["value"].to_numpy()[order]
        (line,) = ax.plot(xs, ys, marker="o", label=str(view))
        lo, hi = part["lo"].to_numpy()[order], part["hi"].to_numpy()[order]
        if np.isfinite(lo).any():
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel(measure)
    suffix = f" (epoch {epoch})" if epoch is not None else ""
    ax.set_title(title or f"{measure} across layers{suffix}")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def plot_across_layers(table: pd.DataFrame, measure: str, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_across_layers` to ``path`` (PNG); returns the path."""
    return _save(figure_across_layers(table, measure, **kwargs), path)


def figure_over_epochs(
    table: pd.DataFrame,
    measure: str,
    view: str | None = None,
    dataset: str | None = None,
    title: str | None = None,
) -> Figure:
    """One measure over epochs, a line per layer (co-attention layers solid, others dashed).

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
    coattention = _coattention_layers(rows)
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    summary = _summarise(rows, ["layer", "epoch"])
    for layer in _layer_order(rows):
        part = summary[summary["layer"] == layer].sort_values("epoch")
        style = "-" if layer in coattention else "--"
        tag = " (co-attn)" if layer in coattention else ""
        xs = part["epoch"].to_numpy(dtype=float)
        (line,) = ax.plot(xs, part["value"], style, marker="o", ms=3, label=f"{layer}{tag}")
        lo, hi = part["lo"].to_numpy(dtype=float), part["hi"].to_numpy(dtype=float)
        if np.isfinite(lo).any():
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("epoch")
    ax.set_ylabel(measure)
    ax.set_title(title or f"{measure} over epochs ({view})")
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    fig.tight_layout()
    return fig


def plot_over_epochs(table: pd.DataFrame, measure: str, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_over_epochs` to ``path`` (PNG); returns the path."""
    return _save(figure_over_epochs(table, measure, **kwargs), path)


def figure_layer_heatmap(
    matrix: pd.DataFrame,
    coattention: Iterable[str] = (),
    title: str | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Heat map of a text-layer × image-layer matrix (rows: text, columns: image).

    ``matrix`` is what ``align.layer_matrix`` returns. Layers named in ``coattention``
    get a ``*`` and bold tick labels. Cells are annotated when the grid is small.
    """
    if not isinstance(matrix, pd.DataFrame) or matrix.empty:
        raise ValueError("matrix must be a non-empty DataFrame (text layers × image layers)")
    values = matrix.to_numpy(dtype=float)
    coattention = set(coattention)
    fig = Figure(figsize=(1.0 + 0.55 * values.shape[1], 1.0 + 0.45 * values.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    def labels(names: Sequence[object]) -> list[str]:
        return [f"{n}*" if str(n) in coattention else str(n) for n in names]

    ax.set_xticks(range(values.shape[1]), labels(matrix.columns), rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), labels(matrix.index))
    for text in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if text.get_text().endswith("*"):
            text.set_fontweight("bold")
    ax.set_xlabel(str(matrix.columns.name or "image layer"))
    ax.set_ylabel(str(matrix.index.name or "text layer"))
    if annotate if annotate is not None else values.size <= 144:
        mid = np.nanmean([np.nanmin(values), np.nanmax(values)])
        for (i, j), v in np.ndenumerate(values):
            if math.isfinite(v):  # dark text on the bright end of viridis
                colour = "k" if v > mid else "w"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=colour)
    ax.set_title(title or "text layer × image layer" + (" (* co-attention)" if coattention else ""))
    fig.tight_layout()
    return fig


def plot_layer_heatmap(matrix: pd.DataFrame, path: str | Path, **kwargs) -> Path:
    """Write :func:`figure_layer_heatmap` to ``path`` (PNG); returns the path."""
    return _save(figure_layer_heatmap(matrix, **kwargs), path)


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
    paths = []
    for measure in dict.fromkeys(table["measure"].astype(str)):
        name = safe_filename(measure)
        paths.append(
            plot_across_layers(
                table, measure, out_dir / f"layers_{name}.png", null=nulls.get(measure)
            )
        )
        rows = table[table["measure"] == measure]
        if rows["epoch"].nunique() > 1:
            paths.append(plot_over_epochs(table, measure, out_dir / f"epochs_{name}.png"))
    if matrix is not None:
        paths.append(
            plot_layer_heatmap(
                matrix, out_dir / "layer_heatmap.png", coattention=_coattention_layers(table)
            )
        )
    return paths

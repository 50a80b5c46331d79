"""One self-contained HTML page for an experiment folder, a run folder or an analyse folder.

The answer first — per measure, in one sentence with numbers and intervals, what
training did to the alignment at the last fusion layer with and without co-attention,
against chance — then the pictures — downstream metrics across cells, training curves,
alignment by layer per measure (every group on shared axes, interval and null bands for
every view, co-attention shaded), alignment over epochs from epoch 0, the layer × layer
matrices on one colour scale, attention concentration, attribution examples — then the
tables (metrics mean ± std over seeds, alignment at the last epoch with intervals, the
attention test, the configuration). An ``vilalign analyse`` folder gets the same order:
the best layers with family-wise p-values and bias warnings, the figures, every number.
Images are embedded as base64 PNG: the page is one file that opens anywhere, offline,
without scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from vilalign.analysis import report as R
from vilalign.config import COATTENTION
from vilalign.experiments.published import depth_figure, last_epochs, published_tables
from vilalign.experiments.runner import (
    DONE_FILE,
    EXPERIMENT_FILE,
    alignment_tables,
    cell_metrics,
    group_metrics,
    metric_columns,
    read_done,
)

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1400px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:14px}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;border:1px solid #eee;padding:6px;background:#fff}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px;max-width:640px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
.explanation{display:inline-block;vertical-align:top;margin:6px;max-width:340px}
.explanation h3{font-size:13px;margin:4px 0}
.note{font-size:14px;background:#f4f8ff;border-left:3px solid #69c;padding:6px 10px}
.answer{font-size:16px;background:#fff8e6;border-left:4px solid #e0a000}
.warn{font-size:14px;background:#fff0f0;border-left:3px solid #c33;padding:6px 10px}
"""


# ---------------------------------------------------------------------------- helpers


def png_data_uri(source: Figure | Path) -> str:
    """A ``data:image/png;base64,...`` URI of a Figure or a PNG file."""
    if isinstance(source, Figure):
        buf = io.BytesIO()
        source.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        data = buf.getvalue()
    else:
        data = Path(source).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(source: Figure | Path, caption: str, width: int | None = None) -> str:
    style = f' style="max-width:{width}px"' if width else ""
    return (
        f'<figure{style}><img src="{png_data_uri(source)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def table_html(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    if frame is None or frame.empty:
        return "<p><em>nothing yet</em></p>"
    return frame.to_html(
        index=False, border=0, na_rep="–", float_format=lambda v: _unsigned_zero(floatfmt.format(v))
    )


def _unsigned_zero(text: str) -> str:
    """ "-0.000" → "0.000": a rounded zero has no sign worth reading."""
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def _section(title: str, body: Iterable[str]) -> str:
    parts = [p for p in body if p]
    if not parts:
        return ""
    return f"<h2>{html.escape(title)}</h2>\n" + "\n".join(parts)


def _figs(items: Iterable[str]) -> str:
    items = [i for i in items if i]
    return f'<div class="figs">{"".join(items)}</div>' if items else ""


def _safe(fn, *args, **kwargs):
    """A picture that cannot be drawn (missing data) is left out, with a log line."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError, FileNotFoundError, IndexError) as err:
        log.info("report: left out %s: %s", getattr(fn, "__name__", fn), err)
        return ""


# ---------------------------------------------------------------------------- figures


def metrics_figure(groups: pd.DataFrame, metric: str) -> Figure:
    """Bar per group: mean over seeds with ±1 std whiskers and the seeds' count."""
    if metric not in groups.columns:
        raise ValueError(f"no metric {metric!r}")
    fig = Figure(figsize=(max(4.5, 1.1 * len(groups) + 2), 3.6))
    ax = fig.add_subplot()
    means = groups[metric].to_numpy(float)
    stds = np.nan_to_num(groups[f"{metric}_std"].to_numpy(float))
    xs = np.arange(len(groups))
    ax.bar(xs, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    for x, m, s, n in zip(xs, means, stds, groups[f"{metric}_n"], strict=True):
        ax.text(x, m + s, f"{m:.3f}\n(n={n})", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, groups["group"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, float(np.nanmax(means + stds)) * 1.15))
    ax.set_title(f"{metric} per cell (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def history(run_dir: Path) -> pd.DataFrame:
    """Epoch-end records of a run (the rows of metrics.jsonl that carry val/ or epoch means)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    ends = [r for r in records if "train/samples_per_s" in r]
    return pd.DataFrame(ends)


def curves_figure(histories: dict[str, list[pd.DataFrame]]) -> Figure:
    """Train loss and every val metric against (integer) epoch; one line per group, the
    mean over seeds with the seeds' min–max as a band."""
    from matplotlib.ticker import MaxNLocator

    frames = [h for hs in histories.values() for h in hs if not h.empty]
    if not frames:
        raise ValueError("no epoch records")
    val = sorted({c for h in frames for c in h.columns if c.startswith("val/")})
    metrics = ["train/loss", *val][:4]
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for group, hs in histories.items():
            parts = [h[["epoch", metric]] for h in hs if metric in h]
            if not parts:
                continue
            by_epoch = pd.concat(parts).groupby("epoch")[metric]
            mean, low, high = by_epoch.mean(), by_epoch.min(), by_epoch.max()
            (line,) = ax.plot(mean.index, mean.values, marker="o", ms=3, label=group)
            ax.fill_between(mean.index, low.values, high.values, color=line.get_color(),
                            alpha=0.15, lw=0)  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric, fontsize=10)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def entropy_figure(frames: dict[str, pd.DataFrame], value: str = "effective_keys") -> Figure:
    """Attention concentration per fusion layer and direction, mean over heads, one panel
    per group on a shared axis; co-attention layers shaded.

    ``value`` defaults to the effective number of attended keys exp(H) (lower = more
    focused), which compares directions with different key counts; tables written before
    it existed fall back to normalised entropy (the axis says which).
    """
    frames = {k: v for k, v in frames.items() if not v.empty}
    if not frames:
        raise ValueError("no attention entropy")
    if not all(value in f.columns for f in frames.values()):
        value = "normalized_entropy"
    fig = Figure(figsize=(4.4 * len(frames), 3.4))
    directions = sorted({d for f in frames.values() for d in f["direction"]})
    width = 0.8 / max(1, len(directions))
    for i, (group, frame) in enumerate(frames.items()):
        ax = fig.add_subplot(1, len(frames), i + 1, sharey=fig.axes[0] if i else None)
        layers = sorted(frame["layer"].unique())
        for layer in frame.loc[frame["layer_kind"] == COATTENTION, "layer"].unique():
            ax.axvspan(layer - 0.45, layer + 0.45, color="0.85", alpha=0.6, lw=0)
        for j, direction in enumerate(directions):
            part = frame[frame["direction"] == direction].groupby("layer")
            means = part[value].mean()
            if means.empty:
                continue
            xs = means.index.to_numpy() - 0.4 + width * (j + 0.5)
            colour = DIRECTION_COLOURS.get(direction)
            ax.bar(xs, means.values, width, label=direction.replace("_", " "), color=colour)
        ax.set_xticks(layers, [f"fusion.{x}" for x in layers], fontsize=8)
        ax.set_title(group, fontsize=9)
        ax.set_ylabel(FOCUS_LABELS.get(value, value) if i == 0 else "")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.suptitle("attention concentration, mean over heads (shaded: co-attention layers)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


FOCUS_LABELS = {
    "effective_keys": "effective keys attended, exp(H)\n(lower = more focused)",
    "normalized_entropy": "normalised entropy H / log n",
}


# One colour per attention direction in every panel (self: blue/green, cross: orange/red).
DIRECTION_COLOURS = {
    "image_self": "tab:blue",
    "text_self": "tab:green",
    "image_to_text": "tab:orange",
    "text_to_image": "tab:red",
}


def _null_for(out_dir: Path, cells: Sequence[str], measure: str, epoch: int) -> pd.DataFrame:
    frames = [
        pd.read_csv(p)
        for c in cells
        if (p := out_dir / "cells" / c / "alignment" / f"nulls_epoch{epoch}.csv").is_file()
    ]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    nulls = pd.concat(frames)
    nulls = nulls[nulls["measure"] == measure]
    if nulls.empty:
        return pd.DataFrame()
    # One band per figure: the first view's (the caption names it).
    view = nulls["view"].iloc[0]
    band = nulls[nulls["view"] == view].groupby("layer", as_index=False)[["low", "high"]].mean()
    return band.assign(view=view)


# ---------------------------------------------------------------------------- sections


class ExperimentReport:
    """Reads an experiment folder and renders its page."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.done = read_done(out_dir)
        self.cells = cell_metrics(self.done)
        self.groups = group_metrics(self.cells)
        self.align = alignment_tables(out_dir)
        path = out_dir / EXPERIMENT_FILE
        self.experiment = json.loads(path.read_text()) if path.is_file() else {}
        self.by_group: dict[str, list[str]] = {}
        for d in self.done:
            self.by_group.setdefault(d["group"], []).append(d["key"])
        self.published = published_tables(out_dir)

    def cell_dir(self, key: str) -> Path:
        return self.out / "cells" / key

    # -- pictures

    def metrics_figures(self) -> str:
        if self.groups.empty:
            return ""
        metrics = metric_columns(self.groups)
        metrics = [m for m in metrics if not m.endswith("loss")] or metrics
        return _figs(
            _safe(figure_html, metrics_figure(self.groups, m), f"{m}: mean ± std over seeds")
            for m in metrics[:3]
        )

    def curve_figures(self) -> str:
        hist = {
            g: [history(self.cell_dir(k) / "finetune") for k in keys]
            for g, keys in self.by_group.items()
        }
        caption = "fine-tuning, per epoch: mean over seeds, band: the seeds' range"
        items = [_safe(lambda: figure_html(curves_figure(hist), caption))]
        for pt in sorted((self.out / "pretrain").glob("*/metrics.png")):
            items.append(figure_html(pt, f"pretraining {pt.parent.name}: losses and metrics", 700))
        return _figs(items)

    def _null_table(self, measure: str) -> pd.DataFrame:
        """The alignment rows of ``measure``; an old folder's null bands (nulls_epoch*.csv,
        before the table carried them) are merged in as null_low/null_high."""
        table = R.validate_table(self.align[self.align["measure"] == measure])
        if table["null_high"].notna().any():
            return table
        for group, keys in self.by_group.items():
            rows = table["run"] == group
            if not rows.any():
                continue
            band = _null_for(self.out, keys, measure, int(table.loc[rows, "epoch"].max()))
            for r in band.itertuples():
                at = rows & (table["layer"] == r.layer) & (table["view"] == r.view)
                table.loc[at, ["null_low", "null_high"]] = (r.low, r.high)
        return table

    def alignment_figures(self) -> str:
        """Per measure one panel: every group on the same axes, each with its interval band
        and its null band, every view (line style)."""
        if self.align.empty:
            return ""
        items = []
        for measure in dict.fromkeys(self.align["measure"]):
            table = self._null_table(measure)
            caption = (
                f"{measure} across layers at each group's last epoch: mean over seeds with its "
                "95 % interval (seeds and samples); hatched: permutation null 5–95 % (per "
                "group and view), dotted: chance level (null mean); crosses: epoch 0, the "
                "same model before its first optimiser step; grey columns: co-attention "
                "layers; line style: view"
            )
            items.append(_safe(lambda t=table, m=measure, c=caption: figure_html(
                R.figure_across_layers(t, m, by="run", title=f"{m} across layers"), c, 820,
            )))  # fmt: skip
        return _figs(items)

    def epoch_figures(self) -> str:
        if self.align.empty or self.align["epoch"].nunique() < 2:
            return ""
        view = str(self.align["view"].iloc[0])
        items = []
        for measure in dict.fromkeys(self.align["measure"]):
            caption = (
                f"{measure} over epochs ({view} view), one panel per group on a shared axis; "
                "epoch 0 is the model before its first optimiser step; bands: 95 % intervals "
                "(seeds and samples); solid: co-attention layers"
            )
            items.append(_safe(lambda m=measure, c=caption: figure_html(
                R.figure_over_epochs(self.align, m, view=view, by="run"), c, 1100,
            )))  # fmt: skip
        return _figs(items)

    def heatmap_figures(self) -> str:
        """The groups' last layer matrices side by side on one colour scale, named."""
        measure = self.experiment.get("analysis", {}).get("heatmap_measure") or "measure"
        matrices, co = {}, {}
        for group, keys in self.by_group.items():
            files = sorted(
                self.cell_dir(keys[0]).glob("alignment/alignment_epoch*_layer_matrix.csv"),
                key=lambda p: int(re.findall(r"epoch(\d+)", p.name)[0]),
            )
            if not files:
                continue
            matrices[group] = pd.read_csv(files[-1], index_col=0)
            kinds = self.align[(self.align["run"] == group)]
            co[group] = set(kinds.loc[kinds["layer_kind"] == COATTENTION, "layer"].astype(str))
        if not matrices:
            return ""
        fig = R.figure_layer_heatmaps(matrices, measure, co)
        caption = (
            f"{measure} between every text layer and every image layer at the last epoch "
            f"(first seed of each group), one colour scale for all"
        )
        return _figs([figure_html(fig, caption, 1100)])

    def attention_figures(self) -> str:
        frames = {}
        for group, keys in self.by_group.items():
            path = self.cell_dir(keys[0]) / "attention" / "entropy_heads.csv"
            if path.is_file():
                frames[group] = pd.read_csv(path)
        if not frames:
            return ""
        return _figs([_safe(lambda: figure_html(entropy_figure(frames), "attention entropy"))])

    def attribution_examples(self, per_group: int = 3) -> str:
        parts = []
        for group, keys in self.by_group.items():
            folder = self.cell_dir(keys[0]) / "attribution"
            snippets = sorted(p for p in folder.glob("*.html") if p.name != "index.html")
            for snippet in snippets[:per_group]:
                parts.append(_inline_images(snippet.read_text(), folder, group))
        return "".join(parts)

    # -- tables

    def metrics_table(self) -> str:
        if self.groups.empty:
            return ""
        frame = self.groups.copy()
        for m in metric_columns(frame):
            frame[m] = [
                f"{a:.4f} ± {s:.4f}" if np.isfinite(s) else f"{a:.4f}"
                for a, s in zip(frame[m], frame[f"{m}_std"], strict=True)
            ]
        keep = [c for c in frame.columns if not re.search(r"_(std|n|ci_low|ci_high)$", c)]
        n = [c for c in frame.columns if c.endswith("_n")][:1]
        return table_html(frame[keep + n].rename(columns={n[0]: "seeds"} if n else {}))

    def alignment_table(self) -> str:
        """Each group's last epoch: mean over seeds with its interval, chance, calibrated."""
        if self.align.empty:
            return ""
        from vilalign.analysis.stats import aggregate_over_seeds

        table = R.validate_table(self.align)
        last = table.groupby("run")["epoch"].transform("max")
        table = table[table["epoch"] == last]
        by = ["run", "layer", "layer_kind", "view", "measure"]
        agg = aggregate_over_seeds(table, by=by)
        agg["value [95% interval]"] = [
            R.format_interval(r.mean, r.ci_low, r.ci_high) for r in agg.itertuples()
        ]
        keep = [*by, "value [95% interval]", "chance", "calibrated", "n"]
        return table_html(agg[[c for c in keep if c in agg]].rename(columns={"n": "seeds"}),
                          "{:.3f}")  # fmt: skip

    def answer(self) -> str:
        """The first screen: per measure, the answer at the last fusion layer in words."""
        if self.align.empty or self.align["epoch"].nunique() < 2:
            return ""
        table = R.validate_table(self.align)
        view = str(table["view"].iloc[0])
        fusion = [layer for layer in R._layer_order(table) if layer.startswith("fusion.")]
        if not fusion:
            return ""
        layer = fusion[-1]  # fixed before looking at the values: no selection to correct
        notes = [
            R.answer_sentence(R.epoch_change(table, m, layer, view), m, layer, view)
            for m in dict.fromkeys(table["measure"])
        ]
        return "".join(f'<p class="note answer">{html.escape(n)}</p>' for n in notes)

    def published_figures(self) -> str:
        """Our groups and the published models against relative depth, one per measure."""
        if self.published.empty:
            return ""
        ours = last_epochs(self.align)
        table = pd.concat([ours, self.published], ignore_index=True)
        shared = set(self.published["view"]) & (set(ours["view"]) if not ours.empty else {"mean"})
        view = next((v for v in ("mean", "cls") if v in shared), None)
        if view is None:
            return ""
        names = set(self.published["run"])
        return _figs(
            _safe(
                lambda m=m: figure_html(
                    depth_figure(table, m, view, names),
                    f"{m} ({view} view) by relative depth: our groups at their last epoch "
                    "(solid), published models (dashed), their at-initialisation "
                    "references (dotted)",
                    560,
                )
            )
            for m in dict.fromkeys(self.published["measure"])
        )

    def published_table(self) -> str:
        if self.published.empty:
            return ""
        wide = self.published.pivot_table(
            index=["run", "dataset", "layer", "layer_kind"],
            columns=["view", "measure"],
            values="value",
            sort=False,
        )
        wide.columns = [f"{v}/{m}" for v, m in wide.columns]
        return table_html(wide.reset_index(), "{:.3f}")

    def focus_notes(self) -> str:
        notes = [
            f'<p class="note"><b>{html.escape(d["group"])}</b> (seed {d["seed"]}): '
            f"{html.escape(d['focus'])}</p>"
            for d in self.done
            if d.get("focus")
        ]
        return "".join(notes)

    def config_block(self) -> str:
        if not self.experiment:
            return ""
        text = yaml.safe_dump(self.experiment, sort_keys=False)
        return f"<pre>{html.escape(text)}</pre>"

    # -- page

    def render(self) -> str:
        name = self.experiment.get("name", self.out.name)
        desc = self.experiment.get("description", "")
        n_groups = len(self.by_group)
        head = (
            f"<h1>{html.escape(name)}</h1><p class='meta'>{html.escape(desc)}<br>"
            f"{len(self.done)} finished cells in {n_groups} groups · folder "
            f"{html.escape(str(self.out))} · written {_now()}</p>"
        )
        body = [
            head,
            _section("The answer", [self.answer()]),
            _section("Downstream metrics", [self.metrics_figures()]),
            _section("Training curves", [self.curve_figures()]),
            _section("Alignment by layer", [self.alignment_figures()]),
            _section("Published models beside ours", [self.published_figures()]),
            _section("Alignment over epochs", [self.epoch_figures()]),
            _section("Text layer × image layer", [self.heatmap_figures()]),
            _section("Attention entropy", [self.attention_figures(), self.focus_notes()]),
            _section("Attribution examples (relevancy)", [self.attribution_examples()]),
            _section("Tables: downstream metrics (mean ± std over seeds)", [self.metrics_table()]),
            _section("Tables: every cell", [table_html(self.cells)]),
            _section("Tables: alignment at the last epoch", [self.alignment_table()]),
            _section("Tables: published models", [self.published_table()]),
            _section("Configuration", [self.config_block()]),
        ]
        return _page(name, "\n".join(b for b in body if b))


def _inline_images(snippet: str, folder: Path, group: str) -> str:
    """Replace ``src="x.png"`` by the file's data URI; tag the snippet with its group."""

    def repl(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        return f'src="{png_data_uri(path)}"' if path.is_file() else match.group(0)

    snippet = re.sub(r'src="([^"]+\.png)"', repl, snippet)
    return snippet.replace("<h3>", f"<h3>{html.escape(group)}: ", 1)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} — vilalign report</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


# ---------------------------------------------------------------------------- single run


def run_report(run_dir: Path) -> str:
    """A page for one pretraining or fine-tuning run folder."""
    items = []
    if (run_dir / "metrics.png").is_file():
        items.append(figure_html(run_dir / "metrics.png", "losses, task metrics and throughput"))
    hist = history(run_dir)
    if not hist.empty:
        items.append(_safe(lambda: figure_html(curves_figure({run_dir.name: [hist]}), "per epoch")))
    align_files = sorted((run_dir.parent / "alignment").glob("alignment_epoch*.csv"))
    align_files += sorted(run_dir.glob("alignment*.csv"))
    align_files += sorted(run_dir.glob("alignment/*/alignment_epoch*.csv"))  # multi-dataset
    tables = [pd.read_csv(f) for f in align_files if "layer_matrix" not in f.name]
    align = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    for measure in dict.fromkeys(align.get("measure", [])):
        items.append(_safe(lambda m=measure: figure_html(R.figure_across_layers(align, m), m, 620)))
        if align["epoch"].nunique() > 1:
            items.append(_safe(lambda m=measure: figure_html(
                R.figure_over_epochs(align, m), f"{m} over epochs (0: before training)", 620,
            )))  # fmt: skip
    config = run_dir / "config.json"
    results = run_dir / "results.json"
    body = [
        f"<h1>{html.escape(run_dir.name)}</h1><p class='meta'>written {_now()}</p>",
        _section("Pictures", [_figs(items)]),
        _section("Results", [f"<pre>{html.escape(results.read_text())}</pre>"])
        if results.is_file()
        else "",
        _section("Configuration", [f"<pre>{html.escape(config.read_text())}</pre>"])
        if config.is_file()
        else "",
    ]
    return _page(run_dir.name, "\n".join(b for b in body if b))


# ---------------------------------------------------------------------------- analyse folder

ANALYSE_TABLE = "alignment.csv"


def analysis_report(folder: Path) -> str:
    """A page for a ``vilalign analyse`` folder: the answer first (best layer per measure
    and view with its family-wise p-value and its share present at initialisation, the
    bias warnings, the best layer pair), then the figures, then every number."""
    from vilalign.analysis.pipeline import ANALYSIS_FILE

    table = R.read_table(folder / ANALYSE_TABLE)
    meta_path = folder / ANALYSIS_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    groups = list(table.groupby(["run", "view", "measure"], sort=False))
    answer = [f'<p class="warn">{html.escape(w)}</p>' for w in meta.get("warnings", [])]
    answer += [f'<p class="note answer">{html.escape(R.best_layer_sentence(rows))}</p>'
               for _, rows in groups]  # fmt: skip
    if meta.get("best_pair_sentence"):
        answer.append(f'<p class="note">{html.escape(meta["best_pair_sentence"])}</p>')
    figures = [
        _safe(lambda m=m: figure_html(R.figure_across_layers(table, m), _layers_caption(m), 820))
        for m in dict.fromkeys(table["measure"])
    ]
    matrix_file = folder / "alignment_layer_matrix.csv"
    if matrix_file.is_file():
        measure = meta.get("heatmap_measure") or "measure"
        matrix = pd.read_csv(matrix_file, index_col=0)
        co = R._coattention_layers(table)
        fig = R.figure_layer_heatmap(matrix, co, title=f"{measure}: text × image layer",
                                     measure=measure)  # fmt: skip
        figures.append(figure_html(fig, f"{measure} between every text and image layer", 620))
    tables = [
        f"<h3>{html.escape(f'{m}, {v} view' + (f', {r}' if r else ''))}</h3>"
        + table_html(R.layer_block(rows))
        for (r, v, m), rows in groups
    ]
    spec = yaml.safe_dump(meta.get("spec", {}), sort_keys=False)
    spec = f"<pre>{html.escape(spec)}</pre>" if meta else ""
    body = [
        f"<h1>{html.escape(folder.name)}: alignment by layer</h1>"
        f"<p class='meta'>{len(table)} rows · folder {html.escape(str(folder))} · written "
        f"{_now()}</p>",
        _section("The answer", answer),
        _section("Alignment by layer", [_figs(figures)]),
        _section("Tables: every layer", tables),
        _section("What was measured", [spec]),
    ]
    return _page(f"{folder.name} alignment", "\n".join(b for b in body if b))


def _layers_caption(measure: str) -> str:
    return (
        f"{measure} across layers: value with its 95 % interval (band), permutation null "
        "5–95 % (hatched, per view) and chance level (dotted); crosses: the same "
        "architecture at initialisation on the same samples (--reference init; mean over "
        "init seeds); grey columns: co-attention layers"
    )


# ---------------------------------------------------------------------------- entry point


def write_report(directory: str | Path, out_file: str | Path | None = None) -> Path:
    """Write ``report.html`` for an experiment folder or a run folder; returns its path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"report: no such folder {directory}")
    is_experiment = (directory / EXPERIMENT_FILE).is_file() or any(
        directory.glob(f"cells/*/{DONE_FILE}")
    )
    if is_experiment:
        page = ExperimentReport(directory).render()
    elif (directory / "config.json").is_file():
        page = run_report(directory)
    elif (directory / ANALYSE_TABLE).is_file():
        page = analysis_report(directory)
    else:
        raise FileNotFoundError(
            f"report: {directory} is neither an experiment folder ({EXPERIMENT_FILE}, "
            f"cells/), a run folder (config.json) nor an analyse folder ({ANALYSE_TABLE})"
        )
    out = Path(out_file) if out_file is not None else directory / REPORT_FILE
    out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.1f kB)", out, out.stat().st_size / 1024)
    return out

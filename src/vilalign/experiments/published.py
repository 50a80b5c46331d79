"""Published models beside the cells: measured on the same data, drawn on the same axes.

An experiment file's ``published:`` list names Hugging Face models (``vilalign.adapters``).
After the grid, each is measured with the experiment's analysis settings on every dataset
the cells fine-tune on, and (``at_init: true``) so is its at-initialisation reference (the
same config with fresh weights). Tables go to ``published/<label>/<dataset>/``, in the
format of the cells' tables (``run`` = the label, no epoch).

Models differ in depth, so the report draws every run against **relative depth**: a
model's k-th measured layer of n sits at k / (n − 1), from 0 (first fusion layer, or the
towers' first paired layer) to 1 (the last).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from vilalign.analysis.align import RunInfo
from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
from vilalign.data import DataConfig
from vilalign.experiments.spec import Cell, ExperimentConfig, PublishedModel

log = logging.getLogger(__name__)

PUBLISHED_DIR = "published"
INIT_SUFFIX = "@init"


def published_spec(exp: ExperimentConfig, data: DataConfig, adapter) -> AlignmentSpec:
    """The cells' analysis settings (the one alignment spec), less the views the model does
    not have."""
    a = exp.analysis
    views = [v for v in a.views if v != "cls" or not adapter.no_summary]
    options = {**a.options(), "views": views or list(adapter.default_views)}
    return AlignmentSpec(data, a.split, max_length=adapter.max_text_length, seed=0, **options)


def _datasets(cells: Sequence[Cell]) -> dict[str, DataConfig]:
    """Each dataset the cells fine-tune on, once (the first cell's settings)."""
    out: dict[str, DataConfig] = {}
    for cell in cells:
        out.setdefault(cell.finetune.data.name, cell.finetune.data)
    return out


def _measure_one(exp: ExperimentConfig, entry: PublishedModel, out_dir: Path,
                 cells: Sequence[Cell], device: str | None) -> list[str]:  # fmt: skip
    from vilalign.adapters import adapter_loader, load_hf_model

    adapter = None
    ran = []
    for name, data in _datasets(cells).items():
        for label in [entry.run_label] + ([entry.run_label + INIT_SUFFIX] if entry.at_init else []):
            folder = out_dir / PUBLISHED_DIR / label / name
            if (folder / "alignment.csv").is_file():
                continue  # measured by an earlier run of the experiment
            adapter = adapter or load_hf_model(entry.name, regions=entry.regions, device=device)
            model = adapter.at_init(seed=0) if label.endswith(INIT_SUFFIX) else adapter
            spec = published_spec(exp, data, model)
            log.info("published model %s on %s", label, name)
            run_alignment(model, None, spec, RunInfo(run=label, dataset=name), folder,
                          adapter_loader(model, spec), progress=False)  # fmt: skip
            ran.append(label)
    return ran


def measure_published(
    exp: ExperimentConfig, out_dir: Path, cells: Sequence[Cell], device: str | None = None
) -> list[str]:
    """Measure every published model (and reference) not yet measured; their labels."""
    ran: list[str] = []
    for entry in exp.published:
        ran += _measure_one(exp, entry, out_dir, cells, device)
    return ran


def published_tables(out_dir: Path) -> pd.DataFrame:
    """Every published model's alignment table, stacked."""
    files = sorted((out_dir / PUBLISHED_DIR).glob("*/*/alignment.csv"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def relative_depth(table: pd.DataFrame) -> pd.Series:
    """Each row's layer as k / (n − 1) among its run's measured layers, in depth order."""
    index = table["layer"].str.extract(r"(\d+)$")[0].astype(int)
    depth = pd.Series(1.0, index=table.index)
    for _, rows in table.groupby("run"):
        order = sorted(set(index[rows.index]))
        if len(order) > 1:
            where = {k: i / (len(order) - 1) for i, k in enumerate(order)}
            depth[rows.index] = index[rows.index].map(where)
    return depth


def depth_figure(table: pd.DataFrame, measure: str, view: str, published: set[str]) -> Figure:
    """``measure`` against relative depth, one line per run (mean over seeds): the cells'
    groups solid, published models dashed, their at-initialisation references dotted."""
    rows = table[(table["measure"] == measure) & (table["view"] == view)]
    rows = rows.assign(depth=relative_depth(rows))
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    for run, part in rows.groupby("run", sort=False):
        line = part.groupby("depth")["value"].mean()
        style = ":" if str(run).endswith(INIT_SUFFIX) else "--" if run in published else "-"
        ax.plot(line.index, line.to_numpy(), style, marker="o", label=str(run))
    ax.set_xlabel("relative depth of the measured layer (0: first, 1: last)")
    ax.set_ylabel(measure)
    ax.set_title(f"{measure} ({view} view): our models and published ones")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def last_epochs(align: pd.DataFrame) -> pd.DataFrame:
    """Each group's rows at its own last epoch (early stopping differs)."""
    if align.empty:
        return align
    last = align.groupby("run")["epoch"].transform("max")
    return align[align["epoch"] == last]

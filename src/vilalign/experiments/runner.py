"""Run an experiment grid: pretrain → fine-tune (alignment after every epoch) → analyse.

Layout of the output folder::

    experiment.json             the validated experiment, as run
    pretrain/<key>/             one pretraining run, shared by the cells that need it
    cells/<key>/finetune/       the fine-tuning run (config, metrics, checkpoints, model)
    cells/<key>/alignment/      alignment_epoch<N>.csv/.parquet, layer matrices, null bands
    cells/<key>/attention/      entropy per head, co- vs self-attention focus test
    cells/<key>/attribution/    relevancy overlays of a few samples
    cells/<key>/cell.json       written first: the settings the cell's results depend on
    cells/<key>/done.json       written last: a cell with it is skipped on a re-run
    published/<label>/<data>/   alignment of each published model (experiment ``published:``)
    summary/                    per-cell and per-group (mean ± std over seeds) tables
    stale_cells/<key>_<hash>/   cells of earlier settings or dropped from the grid (kept)

A run that was interrupted resumes from its last checkpoint; a run that never wrote one
starts again from scratch. Re-running the same command finishes only what is missing.

Settings are part of a result's identity. Before any cell runs, every folder under
``cells/`` is compared with today's grid: a cell whose recorded settings differ (another
learning rate, more epochs, other analyses) or that the grid no longer has is moved to
``stale_cells/`` — kept on disk, left out of the summary and the report, and listed in the
result — and a cell of today's grid whose settings match a stale folder gets it back. So
``experiment.json``, the summary and every ``cells/*/done.json`` always describe the same
settings. The folder is held by one process at a time (:mod:`vilalign.locks`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch
from tqdm.auto import tqdm

from vilalign.analysis.align import RunInfo
from vilalign.analysis.pipeline import (
    ALIGN_PREFIX,
    AlignmentSpec,
    AlignmentTarget,
    EpochAlignment,
    analysis_loader,
)
from vilalign.config import COATTENTION, SELF_ATTENTION
from vilalign.experiments.spec import (
    Cell,
    ExperimentConfig,
    expand_grid,
    normalised_settings,
    run_identity,
    settings_hash,
)
from vilalign.io import write_atomic, write_json_atomic, write_text_atomic
from vilalign.locks import folder_lock
from vilalign.model import load_pretrained, load_tokenizer
from vilalign.train import checkpoint as ckpt
from vilalign.train.config import PretrainConfig
from vilalign.train.loop import EpochCallback
from vilalign.train.run import (
    CONFIG_FILE,
    RESULTS_FILE,
    config_differences,
    run_finetuning,
    run_pretraining,
)

log = logging.getLogger(__name__)

DONE_FILE = "done.json"
EXPERIMENT_FILE = "experiment.json"
CELL_FILE = "cell.json"
CELLS_DIR = "cells"
STALE_DIR = "stale_cells"

#: Makes a tracker for one run: (stage, cell, run_dir) -> Tracker or None (files only).
TrackerFactory = Callable[[str, Cell, Path], Any]


@dataclass
class ExperimentResult:
    out_dir: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)  # cell keys run (not skipped) this time
    skipped: list[str] = field(default_factory=list)
    # folders moved to stale_cells/ this time, with why (settings changed / not in the grid)
    stale: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)  # cells brought back from stale_cells/
    metrics: pd.DataFrame | None = None  # one row per cell
    groups: pd.DataFrame | None = None  # mean ± std over seeds


# ---------------------------------------------------------------------------- stages


def stage_done(run_dir: Path) -> bool:
    return (run_dir / RESULTS_FILE).is_file()


def prepare_stage(run_dir: Path) -> bool:
    """Whether to resume ``run_dir``; a folder without a checkpoint is cleared first.

    A run killed before its first checkpoint left only partial metric files behind;
    appending to them would duplicate records, so it starts over.
    """
    if ckpt.read_pointer(run_dir / "checkpoints") is not None:
        log.info("resuming the interrupted run in %s", run_dir)
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS_FILE).read_text())


# ---------------------------------------------------------------------------- analyses


def alignment_spec(exp: ExperimentConfig, cell: Cell) -> AlignmentSpec:
    """The experiment's analysis options on the cell's fine-tuning data."""
    ft = cell.finetune
    return exp.analysis.spec(ft.data, exp.analysis.split, ft.model.text.max_length, cell.seed)


def alignment_callback(exp: ExperimentConfig, cell: Cell, out_dir: Path) -> EpochAlignment:
    """Alignment per layer after every epoch into ``out_dir``, as ``align/...`` metrics,
    with the permutation null bands the report plots."""
    target = AlignmentTarget(
        alignment_spec(exp, cell),
        out_dir,
        RunInfo(cell.group, cell.seed, None, cell.finetune.data.name),
        ALIGN_PREFIX,
        exp.analysis.null_band,
    )
    return EpochAlignment([target], load_tokenizer(cell.finetune.model.text))


def attention_analysis(
    model: torch.nn.Module, loader: Any, out_dir: Path, max_batches: int
) -> dict[str, Any]:
    """Entropy per head of the final model; co- vs self-attention test when both exist."""
    from vilalign.analysis.attention import (
        attention_entropy,
        compare_coattention_focus,
        head_means,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = attention_entropy(model, loader, max_batches=max_batches)
    means = head_means(frame)
    write_atomic(out_dir / "entropy_heads.csv", lambda tmp: means.to_csv(tmp, index=False))
    summary: dict[str, Any] = {}
    kinds = set(means["layer_kind"])
    if {COATTENTION, SELF_ATTENTION} <= kinds:
        result = compare_coattention_focus(frame, n_resamples=999)
        summary = result.as_row()
    write_text_atomic(out_dir / "focus.json", json.dumps(summary, indent=2, default=float))
    return summary


def attribution_examples(
    model: torch.nn.Module, tokenizer: Any, spec: AlignmentSpec, n: int, method: str, out: Path
) -> list[Path]:
    """Relevancy (or Grad-CAM / IG) overlays of the first ``n`` analysis samples."""
    try:
        from vilalign.analysis.attribution import explain, save_explanations
    except ImportError as err:  # the attribution module is optional for a run
        log.warning("attribution skipped: %s", err)
        return []
    small = spec.model_copy(update={"batch_size": n})
    batch = next(iter(analysis_loader(model, tokenizer, small)))
    batch = batch.to(next(model.parameters()).device)
    explanations = explain(model, batch, method=method, tokenizer=tokenizer)
    cfg = model.image_data_config
    return save_explanations(
        explanations, batch.pixel_values.cpu(), out, mean=cfg["mean"], std=cfg["std"]
    )


# ---------------------------------------------------------------------------- one cell


def run_cell(
    exp: ExperimentConfig,
    cell: Cell,
    out_dir: Path,
    tracker_factory: TrackerFactory | None = None,
) -> dict[str, Any]:
    """Pretrain (if asked and not done), fine-tune (resuming), analyse; write done.json."""
    start = time.perf_counter()
    cell_dir = out_dir / CELLS_DIR / cell.key
    record_cell(cell_dir, cell)
    _hook(tracker_factory, "cell_started", cell, cell_dir)
    pt_dir = _pretrain(cell, out_dir, tracker_factory) if cell.pretrain else None
    if pt_dir is not None:
        _hook(tracker_factory, "pretrain_used", cell, pt_dir)
    ft_dir = cell_dir / "finetune"
    align_cb = alignment_callback(exp, cell, cell_dir / "alignment")
    if not stage_done(ft_dir):
        resume = prepare_stage(ft_dir)
        callbacks: list[EpochCallback] = [align_cb] if exp.analysis.every_epoch else []
        tracker = tracker_factory("finetune", cell, ft_dir) if tracker_factory else None
        run_finetuning(
            cell.finetune, ft_dir, init_from=pt_dir, resume=resume, callbacks=callbacks,
            tracker=tracker,
        )  # fmt: skip
    results = read_results(ft_dir)
    model = load_pretrained(ft_dir / "model").to(_device(cell))
    if not exp.analysis.every_epoch:
        align_cb.measure(model, int(results["epochs"]))
    focus = _final_analyses(exp, cell, model, align_cb, cell_dir)
    # Also when the run was finished by an earlier, killed attempt (before done.json):
    # its record in the run store is then completed here, not left running.
    extra = [cell_dir / d for d in ("alignment", "attention", "attribution")]
    _finish(tracker_factory, ft_dir, extra)
    done = {
        "key": cell.key,
        "group": cell.group,
        "labels": cell.labels,
        "seed": cell.seed,
        "settings_hash": cell.settings_hash,
        "pretrain_dir": str(pt_dir) if pt_dir else None,
        "test": results.get("test", {}),
        "best_value": results.get("best_value"),
        "epochs": results.get("epochs"),
        "focus": focus.get("summary"),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(cell_dir / DONE_FILE, done)
    _hook(tracker_factory, "cell_finished", cell, cell_dir)
    return done


def record_cell(cell_dir: Path, cell: Cell) -> None:
    """cell.json: the settings the cell's results will depend on, written before any."""
    if not (cell_dir / CELL_FILE).is_file():
        cell_dir.mkdir(parents=True, exist_ok=True)
        record = {"key": cell.key, "settings_hash": cell.settings_hash, "settings": cell.settings}
        write_json_atomic(cell_dir / CELL_FILE, record)


def _hook(factory: TrackerFactory | None, name: str, cell: Cell, cell_dir: Path) -> None:
    hook = getattr(factory, name, None)  # the run store: a parent run per cell
    if callable(hook):
        hook(cell, cell_dir)


def _device(cell: Cell) -> torch.device:
    from vilalign.train.loop import resolve_device

    return resolve_device(cell.finetune.train.device)


def _pretrain(cell: Cell, out_dir: Path, tracker_factory: TrackerFactory | None) -> Path:
    pt_dir = pretrain_dir(out_dir, cell)
    if not stage_done(pt_dir):
        log.info("pretraining %s", pt_dir.name)
        resume = prepare_stage(pt_dir)
        tracker = tracker_factory("pretrain", cell, pt_dir) if tracker_factory else None
        run_pretraining(cell.pretrain, pt_dir, resume=resume, tracker=tracker)
    _finish(tracker_factory, pt_dir, [])
    return pt_dir


def pretrain_dir(out_dir: Path, cell: Cell) -> Path:
    """The cell's shared pretraining folder: ``pretrain/<key>``, or a folder of the same
    baseline, objectives and seed whose config.json has the same settings — one named by
    an earlier version, whose hash also covered the device and progress bars."""
    own = out_dir / "pretrain" / str(cell.pretrain_key)
    if own.is_dir():
        return own
    identity = run_identity(cell.pretrain)
    prefix = str(cell.pretrain_key).rsplit("_", 1)[0]
    for folder in sorted(own.parent.glob(f"{prefix}_*")):
        config = folder / CONFIG_FILE
        if config.is_file() and _pretrain_identity(config) == identity:
            log.info("pretraining %s: reusing %s (same settings)", own.name, folder.name)
            return folder
    return own


def _pretrain_identity(path: Path) -> dict[str, Any] | None:
    try:  # (pydantic's ValidationError is a ValueError, as is a broken JSON file)
        return run_identity(PretrainConfig.model_validate(json.loads(path.read_text())))
    except ValueError:
        return None


def _finish(factory: TrackerFactory | None, run_dir: Path, extra: list[Path]) -> None:
    finish = getattr(factory, "finish", None)  # the run store uploads artifacts, closes the run
    if callable(finish):
        finish(run_dir, extra)


def _final_analyses(
    exp: ExperimentConfig,
    cell: Cell,
    model: torch.nn.Module,
    align_cb: EpochAlignment,
    cell_dir: Path,
) -> dict[str, Any]:
    a = exp.analysis
    focus: dict[str, Any] = {}
    if a.attention and model.config.layer_kinds:
        batches = -(-a.attention_samples // a.batch_size)  # whole batches, at least that many
        focus = attention_analysis(model, align_cb.loader(model), cell_dir / "attention", batches)
    if a.attribution_examples and model.config.layer_kinds:
        attribution_examples(
            model, align_cb.tokenizer, align_cb.targets[0].spec, a.attribution_examples,
            a.attribution_method, cell_dir / "attribution",
        )  # fmt: skip
    return focus


# ---------------------------------------------------------------------------- the grid


def run_experiment(
    exp: ExperimentConfig,
    out_dir: str | Path | None = None,
    tracker_factory: TrackerFactory | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Run every cell not yet done, then write the summary tables.

    First the folder is reconciled with the grid (see the module doc), and
    ``experiment.json`` and the summary are written for what the folder then holds.
    """
    out = Path(out_dir) if out_dir is not None else exp.resolved_output_dir()
    with folder_lock(out, "experiment"):
        cells = expand_grid(exp)
        result = ExperimentResult(out, cells)
        result.stale, result.restored = reconcile_cells(out, cells)
        write_json_atomic(out / EXPERIMENT_FILE, json.loads(exp.model_dump_json()))
        summarise(out)  # (until the cells below finish: what is done of these settings)
        for cell in tqdm(cells, desc="cells", unit="cell", disable=not progress):
            if (out / CELLS_DIR / cell.key / DONE_FILE).is_file():
                log.info("cell %s: done already, skipped", cell.key)
                result.skipped.append(cell.key)
                continue
            log.info("cell %s: running", cell.key)
            run_cell(exp, cell, out, tracker_factory)
            result.ran.append(cell.key)
        if exp.published and cells:  # published models beside the cells, on their datasets
            from vilalign.experiments.published import measure_published

            measure_published(exp, out, cells, device=str(_device(cells[0])))
        result.metrics, result.groups = summarise(out)
    return result


# ---------------------------------------------------------------------------- stale cells


def reconcile_cells(out_dir: Path, cells: Sequence[Cell]) -> tuple[dict[str, str], list[str]]:
    """Move every cell folder that is not a cell of ``cells`` with the same settings to
    ``stale_cells/<key>_<hash>/``; bring back stale folders that match a cell of
    ``cells``. Returns ({moved folder: why}, [restored keys])."""
    wanted = {c.key: c for c in cells}
    moved: dict[str, str] = {}
    folders = sorted(p for p in (out_dir / CELLS_DIR).glob("*") if p.is_dir())
    for folder in folders:
        cell = wanted.get(folder.name)
        recorded = recorded_settings(folder, out_dir, cell)
        if recorded is None and not any(folder.iterdir()):
            folder.rmdir()  # (created, then killed before cell.json: nothing in it)
            continue
        why = _stale_reason(recorded, cell)
        if why is None:
            assert cell is not None
            record_cell(folder, cell)  # (a folder of an earlier version: adopted)
            continue
        stale = _move_aside(out_dir, folder, recorded)
        moved[stale.name] = why
        log.warning("cell folder %s %s: moved to %s (kept, not in the summary)",
                    folder.name, why, stale.relative_to(out_dir))  # fmt: skip
    restored = [c.key for c in cells if _restore(out_dir, c)]
    return moved, restored


def recorded_settings(
    folder: Path, out_dir: Path, cell: Cell | None = None
) -> dict[str, Any] | None:
    """A cell folder's settings, read by today's schemas: its cell.json; for a folder of
    an earlier version (no cell.json), rebuilt from its runs' config.json files, with the
    analyses of experiment.json (what the folder was last run with) or, failing that,
    ``cell``'s."""
    path = folder / CELL_FILE
    if path.is_file():
        return normalised_settings(json.loads(path.read_text())["settings"])
    config = folder / "finetune" / CONFIG_FILE
    if not config.is_file():
        return None
    own = cell.settings if cell is not None else {}
    done = json.loads(d.read_text()) if (d := folder / DONE_FILE).is_file() else {}
    pt_config = Path(done["pretrain_dir"]) / CONFIG_FILE if done.get("pretrain_dir") else None
    experiment = out_dir / EXPERIMENT_FILE
    exp = json.loads(experiment.read_text()) if experiment.is_file() else {}
    recorded = {
        "finetune": json.loads(config.read_text()),
        "pretrain": json.loads(pt_config.read_text())
        if pt_config is not None and pt_config.is_file()
        else (own.get("pretrain") if not done else None),
        "analysis": exp.get("analysis", own.get("analysis", {})),
    }
    return normalised_settings(recorded)


def _stale_reason(recorded: dict[str, Any] | None, cell: Cell | None) -> str | None:
    """Why a folder does not hold ``cell`` (None: it does)."""
    if cell is None:
        return "is not in the grid"
    if recorded is None:
        return "has no readable settings"
    changes = config_differences(recorded, cell.settings)
    if not changes:
        return None
    shown = ", ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())
    return f"has other settings ({shown[:500]})"


def _move_aside(out_dir: Path, folder: Path, recorded: dict[str, Any] | None) -> Path:
    tag = settings_hash(recorded) if recorded is not None else "unknown"
    target = out_dir / STALE_DIR / f"{folder.name}_{tag}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same settings moved aside before: keep the newer one
        shutil.rmtree(target)
    os.replace(folder, target)
    return target


def _restore(out_dir: Path, cell: Cell) -> bool:
    """Move a stale folder holding exactly ``cell`` back into cells/."""
    target = out_dir / CELLS_DIR / cell.key
    stale = out_dir / STALE_DIR / f"{cell.key}_{cell.settings_hash}"
    if target.exists() or not stale.is_dir():
        return False
    if recorded_settings(stale, out_dir) != normalised_settings(cell.settings):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stale, target)
    log.info("cell %s: its earlier results with these settings are back from %s", cell.key,
             stale.relative_to(out_dir))  # fmt: skip
    return True


# ---------------------------------------------------------------------------- summary


def read_done(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"cells/*/{DONE_FILE}"))]


def cell_metrics(done: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per finished cell: key, group, axis labels, seed, test metrics, wall time."""
    rows = []
    for d in done:
        row = {"cell": d["key"], "group": d["group"]}
        row.update({k: v for k, v in d["labels"].items() if k != "seed"})
        row["seed"] = d["seed"]
        row.update({k: v for k, v in d["test"].items() if isinstance(v, int | float)})
        row["best_val"] = d.get("best_value")
        row["wall_s"] = d.get("wall_s")
        rows.append(row)
    return pd.DataFrame(rows)


def group_metrics(cells: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean, std, n and a Student-t interval over seeds of every test metric, per group."""
    if cells.empty:
        return cells
    metrics = [c for c in cells.columns if c.startswith("test/") or c == "best_val"]
    labels = [c for c in cells.columns if c not in ("cell", "seed", "wall_s", *metrics)]
    rows = []
    for keys, part in cells.groupby(labels, sort=False, dropna=False):
        row = dict(zip(labels, keys if isinstance(keys, tuple) else (keys,), strict=True))
        for m in metrics:
            values = part[m].dropna().to_numpy(dtype=float)
            row.update(mean_interval(values, m, confidence))
        rows.append(row)
    return pd.DataFrame(rows)


_SPREAD_SUFFIX = re.compile(r"_(std|n|ci_low|ci_high)$")


def metric_columns(groups: pd.DataFrame) -> list[str]:
    """The test metrics' mean columns of :func:`group_metrics` (``test/f1_micro`` included;
    not their ``_std``, ``_n``, ``_ci_low`` and ``_ci_high`` companions)."""
    return [c for c in groups.columns if c.startswith("test/") and not _SPREAD_SUFFIX.search(c)]


def mean_interval(values: np.ndarray, name: str, confidence: float = 0.95) -> dict[str, float]:
    """``name``, ``name_std``, ``name_n``, ``name_ci_low/high`` (NaN spread for one seed)."""
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    t = scipy.stats.t.ppf((1 + confidence) / 2, max(n - 1, 1))
    half = float(t * std / np.sqrt(n)) if n > 1 else float("nan")
    return {
        name: mean, f"{name}_std": std, f"{name}_n": n,
        f"{name}_ci_low": mean - half, f"{name}_ci_high": mean + half,
    }  # fmt: skip


def alignment_tables(out_dir: Path) -> pd.DataFrame:
    """Every cell's per-epoch alignment table, stacked (``run`` = the cell's group)."""
    files = [
        f
        for f in sorted(out_dir.glob("cells/*/alignment/alignment_epoch*.csv"))
        if re.fullmatch(r"alignment_epoch\d+\.csv", f.name)  # not the layer matrices
    ]
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def summarise(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write summary/cells.csv, groups.csv, alignment.csv and alignment_groups.csv."""
    from vilalign.analysis.stats import aggregate_over_seeds

    out_dir = Path(out_dir)
    summary = out_dir / "summary"
    summary.mkdir(parents=True, exist_ok=True)
    cells = cell_metrics(read_done(out_dir))
    groups = group_metrics(cells)
    cells.to_csv(summary / "cells.csv", index=False)
    groups.to_csv(summary / "groups.csv", index=False)
    align = alignment_tables(out_dir)
    if not align.empty:
        align.to_csv(summary / "alignment.csv", index=False)
        by = ["run", "epoch", "dataset", "layer", "layer_kind", "view", "measure"]
        aggregate_over_seeds(align, by=by).to_csv(summary / "alignment_groups.csv", index=False)
    return cells, groups

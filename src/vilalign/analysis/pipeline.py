"""Alignment analysis of one model on one dataset: collect → measure → write.

Used by ``vilalign analyse`` and by :class:`EpochAlignment`, the one per-epoch callback
of multi-dataset fine-tuning, of every cell of an experiment grid and of a tuning trial,
so the numbers after training and during training come from the same code. What to
measure is an :class:`~vilalign.analysis.spec.AlignmentSpec`.

Learned against built-in alignment: the callback also measures *epoch 0*, the model
before its first optimiser step (on the same samples), and :func:`models_at_init` builds
the same architecture freshly initialised (one model per init seed) for
``run_alignment(..., references=...)``, whose table then carries trained − at-init.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from vilalign import distributed as dist
from vilalign.analysis.align import (
    BestPair,
    RunInfo,
    alignment_table,
    best_layer_pair,
    bias_warnings,
    layer_matrix,
)
from vilalign.analysis.collect import Representations, collect, gather_representations
from vilalign.analysis.measures.budget import settings as measure_settings
from vilalign.analysis.retrieval import average_representations
from vilalign.analysis.spec import AlignmentSpec
from vilalign.data import Collator, DataConfig, build_dataset, build_transform
from vilalign.io import write_atomic, write_json_atomic
from vilalign.model.checkpoint import unwrap

log = logging.getLogger(__name__)

ALIGNMENT_DIR = "alignment"
ALIGN_PREFIX = "align/"

__all__ = [
    "ALIGNMENT_DIR",
    "ALIGN_PREFIX",
    "AlignmentResult",
    "AlignmentSpec",
    "AlignmentTarget",
    "EpochAlignment",
    "alignment_loader",
    "alignment_metrics",
    "analysis_loader",
    "models_at_init",
    "null_bands",
    "run_alignment",
    "write_alignment",
]


@dataclass
class AlignmentResult:
    """The table, the layer×layer matrix, what was collected and the files written;
    ``warnings`` name the measures biased at this N and width; ``best_pair`` is the
    matrix's best layer pair with its family-wise p-value (when asked for)."""

    table: pd.DataFrame
    matrix: pd.DataFrame | None
    representations: Representations
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    best_pair: BestPair | None = None


def evaluation_dataset(model: nn.Module, data: DataConfig, split: str) -> Dataset:
    """``split`` of ``data`` with the model's evaluation transform (never augmented,
    also on a training split: analysis looks at the images as they are)."""
    transform = build_transform(unwrap(model).image_data_config, train=False)
    return build_dataset(data, split, transform)


def alignment_loader(dataset: Dataset, tokenizer: Any, spec: AlignmentSpec) -> DataLoader:
    """A loader in fixed order over ``dataset``, batched and padded as ``spec`` needs.

    Token states are stored per position, so the token view pads every text to
    ``max_length``; pooled views pad each batch to its longest text (cheaper).
    """
    padding = "max_length" if "tokens" in spec.views else "longest"
    collator = Collator(tokenizer, max_length=spec.max_length, padding=padding)
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, collate_fn=collator)


def analysis_loader(model: nn.Module, tokenizer: Any, spec: AlignmentSpec) -> DataLoader:
    """An evaluation loader (no augmentation, fixed order) over the analysis split."""
    return alignment_loader(evaluation_dataset(model, spec.data, spec.split), tokenizer, spec)


def _rank_share(loader: DataLoader, n: int) -> tuple[DataLoader, int] | None:
    """This rank's share of the first ``n`` samples under ``torchrun`` (a loader and its
    sample count); None: this process takes them all.

    (Fewer samples than 2 per rank: every rank collects them all, as one process would.)
    """
    if not (dist.is_distributed() and n >= 2 * dist.get_world_size()):
        return None
    shard = dist.RankShard(SequentialSampler(range(n)), dist.get_rank(), dist.get_world_size())
    share = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=shard,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )
    return share, len(shard)


def collect_for(
    model: nn.Module, loader: DataLoader, spec: AlignmentSpec, progress: bool = True
) -> Representations:
    """The representations ``spec`` measures: the first ``n_samples`` of ``loader``.

    Under ``torchrun`` each rank collects its share and the shares are gathered, so every
    rank holds the whole set; Karpathy caption sets are averaged per image if asked.
    """
    n = spec.sample_count(len(loader.dataset))  # type: ignore[arg-type]
    share = _rank_share(loader, n)
    source, count = share or (loader, n)
    reps = collect(
        model,
        source,
        count,
        spec.views,
        spec.include_encoders,
        progress=progress and dist.is_main_process(),
        device=next(unwrap(model).parameters()).device,
    )
    if share is not None:
        reps = gather_representations(reps, n)
    return average_representations(reps) if spec.captions == "average" else reps


def run_alignment(
    model: nn.Module,
    tokenizer: Any,
    spec: AlignmentSpec,
    info: RunInfo,
    out_dir: str | Path | None = None,
    loader: DataLoader | None = None,
    progress: bool = True,
    references: Sequence[nn.Module] = (),
    figures: bool = False,
) -> AlignmentResult:
    """Collect representations once, measure every fusion layer, optionally write files.

    ``references``: models of the same architecture (e.g. :func:`models_at_init`), run
    over the same samples; the table then carries init_value and delta = trained −
    init with intervals. ``figures``: also draw the report's pictures into ``out_dir``
    and name the layer matrix's best pair with a family-wise p-value (``vilalign
    analyse``; the epoch callback leaves both out). Under ``torchrun`` every rank then
    holds the same table; rank 0 writes.
    """
    loader = loader or analysis_loader(model, tokenizer, spec)
    # One memory budget for collection (what stays in memory) and the measures' blocks.
    with measure_settings(memory_gb=spec.memory_gb, progress=progress):
        reps = collect_for(model, loader, spec, progress)
        refs = [collect_for(r, loader, spec, False) for r in references]
        table = alignment_table(
            reps, spec.measures, info, spec.stats, progress=progress, references=refs
        )
        pooled = [v for v in spec.views if v != "tokens"]
        heatmap = str(spec.heatmap_measure)
        matrix = layer_matrix(reps, heatmap, pooled[0]) if pooled else None
        best = None
        if figures and matrix is not None and spec.permutations:
            best = best_layer_pair(reps, heatmap, pooled[0], spec.permutations, spec.seed)
    result = AlignmentResult(table, matrix, reps, [], bias_warnings(reps, spec.measures), best)
    if out_dir is not None and dist.is_main_process():
        result.files = write_alignment(table, matrix, Path(out_dir), info)
        if figures:
            result.files += write_analysis_extras(result, Path(out_dir), spec)
    return result


def write_alignment(
    table: pd.DataFrame, matrix: pd.DataFrame | None, out_dir: Path, info: RunInfo
) -> list[Path]:
    """alignment.csv (+ .parquet) and the layer×layer matrix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "alignment" if info.epoch is None else f"alignment_epoch{info.epoch}"
    files = [out_dir / f"{stem}.csv", out_dir / f"{stem}.parquet"]
    write_atomic(files[0], lambda tmp: table.to_csv(tmp, index=False))
    write_atomic(files[1], lambda tmp: table.to_parquet(tmp, index=False))
    if matrix is not None:
        files.append(write_atomic(out_dir / f"{stem}_layer_matrix.csv", matrix.to_csv))
    return files


#: Written beside an analysis: what was measured (the spec), the bias warnings, and the
#: layer matrix's measure and best pair; ``vilalign report`` reads it.
ANALYSIS_FILE = "analysis.json"


def write_analysis_extras(
    result: AlignmentResult, out_dir: Path, spec: AlignmentSpec
) -> list[Path]:
    """The pictures of one analysis and ``analysis.json`` (spec, warnings, best pair)."""
    from vilalign.analysis.report import plot_report

    files = plot_report(result.table, out_dir, result.matrix)
    record = {
        "spec": json.loads(spec.model_dump_json()),
        "warnings": result.warnings,
        "heatmap_measure": spec.heatmap_measure,
        "best_pair": asdict(result.best_pair) if result.best_pair else None,
        "best_pair_sentence": result.best_pair.sentence() if result.best_pair else None,
    }
    files.append(write_json_atomic(out_dir / ANALYSIS_FILE, record))
    return files


def models_at_init(model: nn.Module, seeds: Sequence[int]) -> list[nn.Module]:
    """The same architecture freshly initialised, one model per seed, on ``model``'s device.

    ``torch.manual_seed(seed)`` then ``build_model(config)``, as a run starts (the seeded
    global RNG, then the model): the checkpoint's own initial weights are matched in
    distribution, and exactly when nothing else drew from the RNG first. Pretrained
    encoders in the config (``init: pretrained``) load as they did for training. The
    global RNG state is restored afterwards.
    """
    if not seeds:
        return []
    from vilalign.model import build_model

    config = unwrap(model).config
    device = next(unwrap(model).parameters()).device
    out = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out.append(build_model(config).to(device).eval())
    return out


def alignment_metrics(table: pd.DataFrame, prefix: str = ALIGN_PREFIX) -> dict[str, float]:
    """A tidy table as tracker metrics: ``<prefix><layer>/<view>/<measure>`` → value."""
    return {f"{prefix}{r.layer}/{r.view}/{r.measure}": float(r.value) for r in table.itertuples()}


def null_bands(
    reps: Representations, measures: Sequence[str], views: Sequence[str], n: int, seed: int
) -> pd.DataFrame:
    """5–95 % quantiles of each pooled measure's permutation null per fusion layer and view.

    What an unrelated pairing of the same text and image states scores: the band a
    layer's value must leave before "aligned" means anything.
    """
    from vilalign.analysis import measures as M
    from vilalign.analysis import stats as S

    pooled = [m for m in measures if M.get_measure(m).level == M.POOLED]
    rows = []
    for layer in reps.fusion_layers:
        for view in (v for v in views if v != "tokens"):
            x, y = reps.get(layer.name, "text", view), reps.get(layer.name, "image", view)
            for measure in pooled:
                try:
                    null = S.permutation_test(measure, x, y, n_permutations=n, seed=seed).null
                except (ValueError, KeyError) as err:  # e.g. a measure needing equal widths
                    log.debug("no null band for %s on %s: %s", measure, layer.name, err)
                    continue
                low, high = np.quantile(null, [0.05, 0.95])
                rows.append(
                    {"layer": layer.name, "view": view, "measure": measure, "low": low,
                     "high": high}
                )  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "view", "measure", "low", "high"])


@dataclass
class AlignmentTarget:
    """One dataset that :class:`EpochAlignment` measures after every epoch.

    ``info`` names the rows (run, seed, dataset; the epoch is filled in); the table goes
    to ``out_dir/alignment_epoch<N>.csv`` and its values come back as
    ``<prefix><layer>/<view>/<measure>`` metrics. ``null_band`` permutations (0: none)
    give each pooled measure's 5–95 % null band in ``nulls_epoch<N>.csv``. ``loader``
    None: built from ``spec`` at the first epoch (the transform comes from the model).
    """

    spec: AlignmentSpec
    out_dir: Path
    info: RunInfo
    prefix: str = ALIGN_PREFIX
    null_band: int = 0
    loader: DataLoader | None = None


class EpochAlignment:
    """The epoch callback: alignment of the model on each target, as ``align/...`` metrics.

    The loaders are fixed (built once), so the same samples are measured every epoch and
    epochs compare. The loop runs callbacks with its RNG state preserved, so training is
    unaffected by them.
    """

    def __init__(self, targets: Sequence[AlignmentTarget], tokenizer: Any = None) -> None:
        if not targets:
            raise ValueError("EpochAlignment needs at least one target")
        self.targets, self.tokenizer = list(targets), tokenizer

    def __call__(self, ctx: Any) -> dict[str, float]:
        """``ctx``: the loop's ``EpochContext`` (its ``task.model``, ``epoch``, ``metrics``)."""
        values = self.measure(ctx.task.model, ctx.epoch)
        ctx.metrics.update(values)  # later callbacks (pruning) may read alignment values
        return values

    def on_fit_start(self, ctx: Any) -> dict[str, float]:
        """Epoch 0: the model before its first optimiser step, on the same samples as
        every later epoch, so "after training" has its own starting point to compare with
        (co-attention mixes the streams by construction, before anything is learned)."""
        return self.measure(ctx.task.model, 0)

    def loader(self, model: nn.Module, target: int = 0) -> DataLoader:
        """A target's loader, built once (the attention analysis reuses it)."""
        t = self.targets[target]
        if t.loader is None:
            t.loader = analysis_loader(model, self.tokenizer, t.spec)
        return t.loader

    def measure(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Measure every target now, as after epoch ``epoch``; returns the metrics."""
        values: dict[str, float] = {}
        for i in range(len(self.targets)):
            values.update(self._measure_target(model, epoch, i))
        return values

    def _measure_target(self, model: nn.Module, epoch: int, i: int) -> dict[str, float]:
        t, loader = self.targets[i], self.loader(model, i)
        info = replace(t.info, epoch=epoch)
        result = run_alignment(model, self.tokenizer, t.spec, info, t.out_dir, loader, False)
        if t.null_band:
            spec = t.spec
            reps = result.representations
            bands = null_bands(reps, spec.measures, spec.views, t.null_band, spec.seed)
            path = t.out_dir / f"nulls_epoch{epoch}.csv"
            write_atomic(path, lambda tmp: bands.to_csv(tmp, index=False))
        return alignment_metrics(result.table, t.prefix)

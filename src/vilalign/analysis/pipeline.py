"""Alignment analysis of one model on one dataset: collect → measure → write.

Used by ``vilalign analyse`` and by the training loop's per-epoch callback, so the
numbers after training and during training come from the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from vilalign.analysis.align import (
    DEFAULT_MEASURES,
    RunInfo,
    StatsOptions,
    alignment_table,
    layer_matrix,
)
from vilalign.analysis.collect import Representations, collect
from vilalign.analysis.report import write_atomic
from vilalign.analysis.retrieval import average_representations
from vilalign.data import Collator, DataConfig, build_dataset, build_transform
from vilalign.model.checkpoint import unwrap
from vilalign.train import distributed as dist

log = logging.getLogger(__name__)

ALIGNMENT_DIR = "alignment"


@dataclass
class AlignmentSpec:
    """What to measure: which samples, views, measures and statistics."""

    data: DataConfig
    split: str
    n_samples: int = 500
    views: Sequence[str] = ("cls", "mean")
    measures: Sequence[str] = DEFAULT_MEASURES
    include_encoders: bool = True
    stats: StatsOptions = field(default_factory=StatsOptions)
    batch_size: int = 64
    max_length: int = 32
    heatmap_measure: str = "cka_linear"
    #: Several captions per image (Karpathy COCO / Flickr30k): "each" measures every caption
    #: as a sample; "average" first averages each image's rows (both streams), one per image.
    captions: str = "each"

    def __post_init__(self) -> None:
        if self.captions not in ("each", "average"):
            raise ValueError(f"captions: {self.captions!r} is not 'each' or 'average'")
        if self.captions == "average" and "tokens" in self.views:
            raise ValueError("captions: 'average' works on pooled views; drop 'tokens'")


@dataclass
class AlignmentResult:
    table: pd.DataFrame
    matrix: pd.DataFrame | None
    representations: Representations
    files: list[Path]


def evaluation_dataset(model: nn.Module, data: DataConfig, split: str) -> Dataset:
    """``split`` of ``data`` with the model's evaluation transform (never augmented,
    also on a training split: analysis looks at the images as they are)."""
    transform = build_transform(unwrap(model).image_data_config, train=False)
    return build_dataset(data, split, transform)


def analysis_loader(model: nn.Module, tokenizer: Any, spec: AlignmentSpec) -> DataLoader:
    """An evaluation loader (no augmentation, fixed order) over the analysis split."""
    dataset = evaluation_dataset(model, spec.data, spec.split)
    padding = "max_length" if "tokens" in spec.views else "longest"
    collator = Collator(tokenizer, max_length=spec.max_length, padding=padding)
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, collate_fn=collator)


def run_alignment(
    model: nn.Module,
    tokenizer: Any,
    spec: AlignmentSpec,
    info: RunInfo,
    out_dir: str | Path | None = None,
    loader: DataLoader | None = None,
    progress: bool = True,
) -> AlignmentResult:
    """Collect representations once, measure every fusion layer, optionally write files.

    Under ``torchrun`` each rank collects its share of the samples and the shares are
    gathered before measuring (every rank then holds the same table); rank 0 writes.
    """
    loader = loader or analysis_loader(model, tokenizer, spec)
    n = min(spec.n_samples, len(loader.dataset))  # type: ignore[arg-type]
    # (fewer samples than 2 per rank: every rank collects them all, as one process would)
    sharded = dist.is_distributed() and n >= 2 * dist.get_world_size()
    local_n = n
    if sharded:
        shard = dist.RankShard(SequentialSampler(range(n)), dist.get_rank(), dist.get_world_size())
        local_n = len(shard)
        loader = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=shard,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )
    reps = collect(
        model,
        loader,
        local_n,
        spec.views,
        spec.include_encoders,
        progress=progress and dist.is_main_process(),
        device=next(unwrap(model).parameters()).device,
    )
    if sharded:
        reps = dist.gather_representations(reps, n)
    if spec.captions == "average":
        reps = average_representations(reps)
    table = alignment_table(reps, spec.measures, info, spec.stats, progress=progress)
    pooled = [v for v in spec.views if v != "tokens"]
    matrix = layer_matrix(reps, spec.heatmap_measure, pooled[0]) if pooled else None
    files: list[Path] = []
    if out_dir is not None and dist.is_main_process():
        files = write_alignment(table, matrix, Path(out_dir), info)
    return AlignmentResult(table, matrix, reps, files)


def write_alignment(
    table: pd.DataFrame, matrix: pd.DataFrame | None, out_dir: Path, info: RunInfo
) -> list[Path]:
    """alignment.csv (+ .parquet), the layer×layer matrix, and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "alignment" if info.epoch is None else f"alignment_epoch{info.epoch}"
    files = [out_dir / f"{stem}.csv", out_dir / f"{stem}.parquet"]
    write_atomic(files[0], lambda tmp: table.to_csv(tmp, index=False))
    write_atomic(files[1], lambda tmp: table.to_parquet(tmp, index=False))
    if matrix is not None:
        files.append(write_atomic(out_dir / f"{stem}_layer_matrix.csv", matrix.to_csv))
    return files


def alignment_metrics(table: pd.DataFrame, prefix: str = "align/") -> dict[str, float]:
    """A tidy table as tracker metrics: ``<prefix><layer>/<view>/<measure>`` → value."""
    return {f"{prefix}{r.layer}/{r.view}/{r.measure}": float(r.value) for r in table.itertuples()}


class EpochAlignment:
    """A training epoch callback: alignment of the model on each of several datasets.

    Each dataset gets its own table per epoch (``<out_dir>/<dataset>/alignment_epoch<N>.csv``),
    its rows tagged with the dataset's name; the values come back as
    ``align/<dataset>/<layer>/<view>/<measure>`` metrics. The loaders are fixed, so the same
    samples are measured every epoch. The loop runs callbacks with its RNG state preserved.
    """

    def __init__(
        self,
        specs: Mapping[str, AlignmentSpec],
        loaders: Mapping[str, DataLoader],
        out_dir: str | Path,
        run: str = "",
        seed: int = 0,
    ) -> None:
        self.specs, self.loaders = dict(specs), dict(loaders)
        self.out_dir, self.run, self.seed = Path(out_dir), run, seed

    def __call__(self, ctx: Any) -> dict[str, float]:
        """``ctx``: the loop's ``EpochContext`` (its ``task.model`` and ``epoch``)."""
        values: dict[str, float] = {}
        for name, spec in self.specs.items():
            info = RunInfo(self.run, self.seed, ctx.epoch, name)
            result = run_alignment(
                ctx.task.model,
                None,
                spec,
                info,
                self.out_dir / name,
                self.loaders[name],
                progress=False,
            )
            values.update(alignment_metrics(result.table, f"align/{name}/"))
        return values

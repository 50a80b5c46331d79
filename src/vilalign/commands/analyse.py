"""``vilalign analyse``: layer-wise alignment of a model's text and image streams."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_output_dir,
    add_source_args,
    check_device,
    data_config,
    load_source,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vilalign.analysis.defaults import DEFAULT_MEASURES, DEFAULT_MEMORY_GB  # no torch

    p = add_command(
        sub,
        "analyse",
        aliases=("analyze",),
        help="measure text-image alignment layer by layer",
        description=(
            "Run a model once over N samples of a dataset, collect each fusion layer's text "
            "and image representations (and the encoders'), and compare them with alignment "
            "measures. Writes alignment.csv/.parquet and the layer x layer matrix into "
            "--output-dir and prints a compact table. Under torchrun each process collects "
            "its share of the samples."
        ),
    )
    add_source_args(p)
    p.add_argument(
        "--n-samples",
        type=sample_count,
        default=500,
        metavar="N",
        help="samples to collect, or 'all' (the whole split; stored on disk when large)",
    )
    p.add_argument(
        "--memory-gb",
        type=float,
        default=DEFAULT_MEMORY_GB,
        metavar="GB",
        help="memory for the measures' N x N matrices and blocks and for collected states "
        "kept in memory; above it, blocked forms and disk (default: %(default)s)",
    )
    p.add_argument("--views", default="cls,mean", help="comma list of cls, mean, tokens")
    p.add_argument(
        "--measures",
        default=", ".join(DEFAULT_MEASURES),
        help="comma list of measure names (an unknown name lists the known ones)",
    )
    p.add_argument(
        "--permutations",
        type=int,
        default=0,
        metavar="N",
        help="permutation-null size (p-values); 0: none",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=0,
        metavar="N",
        help="bootstrap resamples (intervals); 0: none",
    )
    p.add_argument(
        "--captions",
        choices=("each", "average"),
        default="each",
        help="several captions per image (coco_karpathy, flickr30k_karpathy): measure each "
        "caption as a sample, or average each image's representations first",
    )
    p.add_argument(
        "--caption",
        type=int,
        metavar="N",
        help="read only caption number N of each image (one sample per image; default: all)",
    )
    add_output_dir(p, Path("runs/analyse"), "output folder", old=("--run-dir",))
    p.set_defaults(handler=run)


def sample_count(value: str) -> int | str:
    """A positive number of samples, or 'all'."""
    return "all" if value.strip().lower() == "all" else positive_int(value)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    from vilalign import distributed as dist
    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment

    # torchrun: each rank collects its share of the samples (on cuda:LOCAL_RANK unless
    # --device cpu), rank 0 writes and prints.
    check_device(args.device)  # a GPU that is not there: a clear error, before any work
    device = dist.init_distributed(args.device)
    model, tokenizer, run_name = load_source(args, device)
    spec = AlignmentSpec(
        data=data_config(args, caption=args.caption),
        split=args.split,
        n_samples=args.n_samples,
        views=_split(args.views),
        measures=_split(args.measures),
        permutations=args.permutations,
        resamples=args.resamples,
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=model.config.text.max_length,
        heatmap_measure="cka_linear",  # the matrix this command has always drawn
        captions=args.captions,
        memory_gb=args.memory_gb,
    )
    info = RunInfo(run=run_name, seed=args.seed, dataset=args.dataset)
    result = run_alignment(
        model, tokenizer, spec, info, out_dir=args.output_dir, progress=args.progress
    )
    main = dist.is_main_process()
    dist.cleanup()
    if not main:
        return 0
    print(compact_table(result.table))
    for path in result.files:
        print(f"wrote {path}")
    return 0


def compact_table(table) -> str:
    """Layers as rows, (view, measure) as columns, values to 3 decimals."""
    wide = table.pivot_table(
        index=["layer", "layer_kind"], columns=["view", "measure"], values="value", sort=False
    )
    return wide.round(3).to_string()

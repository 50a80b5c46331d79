"""``vilalign analyse``: layer-wise alignment of a model's text and image streams."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_output_dir,
    add_source_args,
    analysis_command,
    check_device,
    check_sample_count,
    data_config,
    load_source,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vilalign.analysis.defaults import DEFAULT_MEASURES  # plain data: no torch

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
        "--n-samples", type=positive_int, default=500, metavar="N", help="samples to collect"
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
    analysis_command(p, "analyse", run)  # (its folder held, its files to MLflow)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    from vilalign import distributed as dist
    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import AlignmentSpec, analysis_loader, run_alignment

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
    )
    info = RunInfo(run=run_name, seed=args.seed, dataset=args.dataset)
    loader = analysis_loader(model, tokenizer, spec)
    check_sample_count(loader.dataset, args.n_samples, args.split)  # before collecting
    result = run_alignment(
        model, tokenizer, spec, info, out_dir=args.output_dir, loader=loader,
        progress=args.progress,
    )  # fmt: skip
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

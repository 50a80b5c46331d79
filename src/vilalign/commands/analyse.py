"""``vilalign analyse``: layer-wise alignment of a model's text and image streams."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import add_source_args, load_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vilalign.analysis.align import DEFAULT_MEASURES

    p = sub.add_parser(
        "analyse",
        help="measure text-image alignment layer by layer",
        description=(
            "Run a model once over N samples of a dataset, collect each fusion layer's text "
            "and image representations (and the encoders'), and compare them with alignment "
            "measures. Writes alignment.csv/.parquet and the layer x layer matrix into "
            "--run-dir and prints a compact table. --hf-model reads a published model "
            "(BridgeTower, ViLT, CLIP, SigLIP, LXMERT, VisualBERT) the same way."
        ),
    )
    add_source_args(p, published=True)
    p.add_argument("--n-samples", type=int, default=500, help="samples to collect (default 500)")
    p.add_argument(
        "--views",
        default=None,
        help="comma list of cls, mean, tokens (default: cls,mean; mean alone for a published "
        "model without an image summary token: SigLIP, LXMERT, VisualBERT)",
    )
    p.add_argument(
        "--measures",
        default=",".join(DEFAULT_MEASURES),
        help="comma list of measure names (default: %(default)s)",
    )
    p.add_argument("--permutations", type=int, default=0, help="permutation-null size (p-values)")
    p.add_argument("--resamples", type=int, default=0, help="bootstrap resamples (intervals)")
    p.add_argument(
        "--captions",
        choices=("each", "average"),
        default="each",
        help="several captions per image (coco_karpathy, flickr30k_karpathy): measure each "
        "caption as a sample, or average each image's representations first (default: each)",
    )
    p.add_argument(
        "--caption",
        type=int,
        default=None,
        help="read only caption number N of each image (one sample per image)",
    )
    p.add_argument("--run-dir", type=Path, default=Path("runs/analyse"), help="output folder")
    p.set_defaults(handler=run)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _default_views(model, published: bool) -> list[str]:
    return list(model.default_views) if published else ["cls", "mean"]


def run(args: argparse.Namespace) -> int:
    from vilalign.analysis.align import RunInfo, StatsOptions
    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
    from vilalign.data import DataConfig
    from vilalign.train import distributed as dist

    # torchrun: each rank collects its share of the samples (on cuda:LOCAL_RANK), rank 0
    # writes and prints.
    dist.init_distributed()
    model, tokenizer, run_name = load_source(args)
    published = getattr(args, "hf_model", None) is not None
    spec = AlignmentSpec(
        data=DataConfig(name=args.dataset, root=args.root, caption=args.caption),
        split=args.split,
        n_samples=args.n_samples,
        views=_split(args.views) if args.views else _default_views(model, published),
        measures=_split(args.measures),
        stats=StatsOptions(args.permutations, args.resamples, seed=args.seed),
        batch_size=args.batch_size,
        max_length=model.max_text_length if published else model.config.text.max_length,
        captions=args.captions,
    )
    info = RunInfo(run=run_name, seed=args.seed, dataset=args.dataset)
    loader = None
    if published:  # the model's own processor prepares images and texts
        from vilalign.adapters import adapter_loader

        loader = adapter_loader(model, spec)
    result = run_alignment(model, tokenizer, spec, info, out_dir=args.run_dir, loader=loader)
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

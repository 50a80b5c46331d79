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

#: Measured wall time of the defaults (see docs/statistics.md, "Cost"), for the help.
DEFAULT_COST = (
    "With the defaults, N = 1,000 samples of a model with 8 fusion layers take about 3 "
    "minutes on this 2-core CPU (measured at width 128: 2.6 CPU-minutes in all, forward "
    "passes included)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "analyse",
        aliases=("analyze",),
        help="measure text-image alignment layer by layer",
        description=(
            "Run a model once over N samples of a dataset, collect each fusion layer's text "
            "and image representations (and the encoders'), and compare them with alignment "
            "measures. Every value comes with its interval (the measure's registered method, "
            "docs/statistics.md), its permutation null (chance level, p-value, null band, "
            "null-calibrated score) and a family-wise p-value over the layers for the best "
            "one. --reference init measures the same architecture at initialisation on the "
            "same samples and reports trained - at-init. Writes alignment.csv/.parquet, the "
            "layer x layer matrix, the figures and analysis.json into --output-dir (`vilalign "
            f"report DIR` makes a page of it) and prints the tables. {DEFAULT_COST} Under "
            "torchrun each process collects its share of the samples. --hf-model reads a "
            "published model (BridgeTower, ViLT, CLIP, SigLIP, LXMERT, VisualBERT) the same way."
        ),
    )
    add_source_args(p, published=True)
    _add_samples_and_measures(p)
    _add_statistics(p)
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


def _add_samples_and_measures(p: argparse.ArgumentParser) -> None:
    """What is measured: how many samples, in which views, with which measures."""
    # plain data: no torch
    from vilalign.analysis.defaults import DEFAULT_MEASURES, DEFAULT_MEMORY_GB, DEFAULT_SAMPLES

    p.add_argument(
        "--n-samples",
        type=sample_count,
        default=DEFAULT_SAMPLES,
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
    p.add_argument(
        "--views",
        default=None,
        help="comma list of cls, mean, tokens (default: cls,mean; mean alone for a published "
        "model without an image summary token: SigLIP, LXMERT, VisualBERT)",
    )
    p.add_argument(
        "--measures",
        default=",".join(DEFAULT_MEASURES),
        help="comma list of measure names (an unknown name lists the known ones; biased "
        "ones, e.g. cka_linear or cca at N < D, are reported with a warning)",
    )


def _add_statistics(p: argparse.ArgumentParser) -> None:
    """The statistics on every number: nulls, intervals, the at-init reference."""
    from vilalign.analysis.defaults import DEFAULT_PERMUTATIONS, DEFAULT_RESAMPLES

    p.add_argument(
        "--permutations",
        type=int,
        default=DEFAULT_PERMUTATIONS,
        metavar="N",
        help="permutation-null size (p-values, chance level, null band); 0: none",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="half-samples behind each interval; 0: none",
    )
    p.add_argument(
        "--reference",
        choices=("none", "init"),
        default="none",
        help="init: also measure the same architecture at initialisation (same samples) "
        "and report trained - at-init per layer, with intervals",
    )
    p.add_argument(
        "--reference-seeds",
        metavar="LIST",
        help="init seeds of the reference, e.g. 0,1,2 (several give an interval over init "
        "seeds); default: --seed",
    )


def sample_count(value: str) -> int | str:
    """A positive number of samples, or 'all'."""
    return "all" if value.strip().lower() == "all" else positive_int(value)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _default_views(model, published: bool) -> list[str]:
    return list(model.default_views) if published else ["cls", "mean"]


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.reference == "none":
        if args.reference_seeds:
            raise ValueError("--reference-seeds needs --reference init")
        return []
    if getattr(args, "hf_model", None):
        raise ValueError(
            "--reference init needs a vilalign model (--checkpoint or --preset); a published "
            "model's at-init reference: `at_init: true` in an experiment file's published list"
        )
    if not args.reference_seeds:
        return [args.seed]
    try:
        return [int(s) for s in _split(args.reference_seeds)]
    except ValueError:
        raise ValueError(
            f"--reference-seeds: expected integers like 0,1,2, got {args.reference_seeds!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from vilalign import distributed as dist
    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import (
        AlignmentSpec,
        analysis_loader,
        models_at_init,
        run_alignment,
    )
    from vilalign.analysis.report import text_report

    # torchrun: each rank collects its share of the samples (on cuda:LOCAL_RANK unless
    # --device cpu), rank 0 writes and prints.
    check_device(args.device)  # a GPU that is not there: a clear error, before any work
    seeds = _seeds(args)
    device = dist.init_distributed(args.device)
    model, tokenizer, run_name = load_source(args, device)
    published = getattr(args, "hf_model", None) is not None
    # Validated here, before any collection: unknown measures, N too small for a
    # measure, its interval (half-samples) or k neighbours are errors naming them.
    spec = AlignmentSpec(
        data=data_config(args, caption=args.caption),
        split=args.split,
        n_samples=args.n_samples,
        views=_split(args.views) if args.views else _default_views(model, published),
        measures=_split(args.measures),
        permutations=args.permutations,
        resamples=args.resamples,
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=model.max_text_length if published else model.config.text.max_length,
        captions=args.captions,
        memory_gb=args.memory_gb,
    )
    info = RunInfo(run=run_name, seed=args.seed, dataset=args.dataset)
    if published:  # the model's own processor prepares images and texts
        from vilalign.adapters import adapter_loader

        loader = adapter_loader(model, spec)
    else:
        loader = analysis_loader(model, tokenizer, spec)
    check_sample_count(loader.dataset, args.n_samples, args.split)  # before collecting
    result = run_alignment(
        model, tokenizer, spec, info, out_dir=args.output_dir, loader=loader,
        progress=args.progress, references=models_at_init(model, seeds), figures=True,
    )  # fmt: skip
    main = dist.is_main_process()
    dist.cleanup()
    if not main:
        return 0
    print(text_report(result.table, result.warnings, result.best_pair))
    for path in result.files:
        print(f"wrote {path}")
    return 0

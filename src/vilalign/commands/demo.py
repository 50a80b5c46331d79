"""``vilalign demo``: the whole toolkit on easy-VQA in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_device,
    add_no_progress,
    add_output_dir,
    add_overrides,
    add_threads,
    run_file_overrides,
)
from vilalign.commands.run import DEVICE_HELP, TRAIN_PATHS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        help="fine-tune with/without co-attention (3 seeds), analyse, report (CPU, minutes)",
        description=(
            "On easy-VQA (shipped by the easy-vqa package) with the tiny preset: fine-tuning "
            "with and without co-attention, 3 seeds each; alignment per layer before training "
            "(epoch 0) and after every epoch, each value with its interval and permutation "
            "null; attention concentration, relevancy maps; writes OUTPUT_DIR/report.html and "
            "prints the answer in one sentence per measure. Running it again reuses what is "
            "finished. The same experiment is configs/demo.yaml, for `vilalign run`; "
            "--set grid.pretraining=[all] adds a brief MLM+MIM+AP pretraining."
        ),
    )
    add_output_dir(p, Path("runs/demo"), "output folder")
    add_overrides(p, "the demo's experiment (configs/demo.yaml)", "--set grid.seeds=[0,1]")
    add_device(p, None, DEVICE_HELP)
    add_threads(
        p,
        "torch CPU threads while the demo runs (default: 1, the demo's own: on a shared CPU "
        "more threads spin against each other)",
    )
    add_no_progress(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.demo import run_demo

    start = time.perf_counter()
    overrides = run_file_overrides(args, TRAIN_PATHS)
    # run_demo's own arguments share its keyword space with the experiment's fields
    own = {"output_dir": "--output-dir", "threads": "--threads", "progress": "--no-progress"}
    clash = sorted(own.keys() & overrides.keys())
    if clash:
        raise ValueError(f"--set {clash[0]}: use {own[clash[0]]}")
    settings = {"threads": args.threads} if args.threads else {}  # default: the demo's (1)
    print(f"vilalign demo: writing to {args.output_dir}/ (a few minutes on a CPU)")
    result = run_demo(args.output_dir, progress=args.progress, **settings, **overrides)
    print()
    print(result.table.to_string(index=False))
    print()
    print("chance on easy-VQA: always 'yes' 0.37, question only about 0.67")
    for sentence in result.answer:
        print(f"answer: {sentence}")
    print(f"report: {result.report}")
    if result.tracking_uri:
        print(f"runs recorded in MLflow: mlflow ui --backend-store-uri {result.tracking_uri}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0

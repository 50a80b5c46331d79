"""``vilalign demo``: the whole toolkit on easy-VQA in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain, fine-tune with/without co-attention, analyse, report (CPU, minutes)",
        description=(
            "On easy-VQA (shipped by the easy-vqa package) with the tiny preset: brief "
            "pretraining (MLM + MIM + AP on captions built from the questions and answers), "
            "fine-tuning with and without co-attention, alignment per layer after every "
            "epoch, attention entropy, relevancy maps; writes OUTPUT_DIR/report.html. "
            "Running it again reuses what is finished. The same experiment is "
            "configs/demo.yaml, for `vilalign run`."
        ),
    )
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.demo import run_demo

    start = time.perf_counter()
    print(f"vilalign demo: writing to {args.output_dir}/ (a few minutes on a CPU)")
    result = run_demo(args.output_dir, progress=not args.no_progress)
    print()
    print(result.table.to_string(index=False))
    print()
    print("chance on easy-VQA: always 'yes' 0.37, question only about 0.67")
    print(f"report: {result.report}")
    if result.tracking_uri:
        print(f"runs recorded in MLflow: mlflow ui --backend-store-uri {result.tracking_uri}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0

"""End-to-end check on real data: fine-tune (or pretrain) from a run file, report wall time.

    python benchmarks/train_easyvqa.py configs/finetune_easyvqa_tiny.yaml runs/easyvqa-tiny
    python benchmarks/train_easyvqa.py configs/pretrain_easyvqa_tiny.yaml runs/pretrain-tiny \
        --pretrain
    ... --resume   continues an interrupted run exactly

Prints the per-epoch summaries (logging) and, at the end, the test metrics and wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from vilalign.commands import HelpFormatter
from vilalign.train.config import FinetuneConfig, PretrainConfig, load_run_config
from vilalign.train.run import run_finetuning, run_pretraining


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("config", help="run file (YAML), e.g. configs/finetune_easyvqa_tiny.yaml")
    parser.add_argument("run_dir", help="folder the run writes (model, metrics, checkpoints)")
    parser.add_argument("--pretrain", action="store_true", help="run file is a pretraining run")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in run_dir exactly"
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="fine-tuning: pretrained model folder or run to start from "
        "(default: the run file's init_from)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"train": {"progress": False}} if args.no_progress else {}
    start = time.perf_counter()
    if args.pretrain:
        cfg = load_run_config(args.config, PretrainConfig, **overrides)
        result = run_pretraining(cfg, args.run_dir, resume=args.resume)
    else:
        cfg = load_run_config(args.config, FinetuneConfig, **overrides)
        result = run_finetuning(cfg, args.run_dir, init_from=args.init_from, resume=args.resume)
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "test": result.test_metrics,
                "wall_time_s": round(wall, 1),
                "epochs": len(result.fit.history),
                "run_dir": str(result.run_dir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Fine-tuning throughput: samples/s of the training loop, and the share of time spent
waiting for data, for the tiny and the base preset (random weights) on easy-VQA.

Runs the real loop (``Trainer.train_epoch``: data loading, forward, backward, clipping,
AdamW) on real easy-VQA images, read through the memory-mapped image cache and, for
comparison, decoded from the PNG files every time. Target: data wait under 10 % with
the cache.

    python benchmarks/train_throughput.py [--presets tiny base] [--tiny-steps 30]
        [--base-steps 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from typing import Any

import torch

from vilalign.data import Collator
from vilalign.model import build_model, load_tokenizer
from vilalign.train.config import FinetuneConfig
from vilalign.train.loop import Trainer, seed_everything
from vilalign.train.run import build_splits
from vilalign.train.tasks import FinetuneTask

# The base preset loads hub weights; for a speed test random weights of the same shapes do.
RANDOM_BASE: dict[str, Any] = {
    "text": {
        "name_or_path": None,
        "init": "random",
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
    },
    "image": {"pretrained": False},
}


def measure(
    preset: str, batch_size: int, steps: int, cache: bool, workers: int
) -> dict[str, float]:
    """Train ``steps`` steps (after one warm-up step) and return the loop's own timing."""
    model = RANDOM_BASE if preset == "base" else {}
    cfg = FinetuneConfig(
        preset=preset,
        model=model,
        data={"name": "easyvqa", "limit": batch_size * (steps + 1), "cache": {"enabled": cache}},
        splits={"val_fraction": 0.0},
        train={"batch_size": batch_size, "epochs": 1, "progress": False, "num_workers": workers},
    )
    seed_everything(0)
    splits = build_splits(cfg)
    task = FinetuneTask(build_model(cfg.model.model_copy(update={"num_labels": 13})), "easyvqa")
    collate = Collator(load_tokenizer(cfg.model.text), max_length=cfg.model.text.max_length)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(task, cfg.train, cfg.optim, run_dir, splits.train, None, collate)
        trainer.cfg = cfg.train.model_copy(update={"max_steps": 1})
        trainer.train_epoch()  # warm-up: first-call allocations, lazy init
        trainer.progress.batch_in_epoch = 0
        trainer.cfg = cfg.train.model_copy(update={"max_steps": steps + 1})
        return trainer.train_epoch()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--tiny-steps", type=int, default=30)
    parser.add_argument("--base-steps", type=int, default=3)
    parser.add_argument("--tiny-batch", type=int, default=32)
    parser.add_argument("--base-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'preset':6} {'images':7} {'batch':>5} {'steps':>5} {'samples/s':>10} {'data wait':>9}")
    for preset in args.presets:
        steps = args.tiny_steps if preset == "tiny" else args.base_steps
        batch = args.tiny_batch if preset == "tiny" else args.base_batch
        for cache in (True, False):
            r = measure(preset, batch, steps, cache, args.workers)
            source = "cache" if cache else "PNG"
            print(
                f"{preset:6} {source:7} {batch:5d} {steps:5d} {r['samples_per_s']:10.1f} "
                f"{r['data_wait_share']:9.1%}"
            )


if __name__ == "__main__":
    main()

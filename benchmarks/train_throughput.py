"""Fine-tuning throughput: samples/s of the training loop, and the share of time spent
waiting for data, for the tiny and the base preset (random weights) on easy-VQA.

Runs the real loop (``Trainer.train_epoch``: data loading, forward, backward, clipping,
AdamW) on real easy-VQA images, read through the memory-mapped image cache and, for
comparison, decoded from the PNG files every time. Target: data wait under 10 % with
the cache.

    python benchmarks/train_throughput.py [--presets tiny base] [--tiny-steps 30]
        [--base-steps 3] [--workers 0]

``--fast-paths`` instead compares the GPU fast paths (``train.amp`` and ``train.fast``) for
one preset, each flipped on its own against the default, plus everything off (fp32
eager), side by side: samples/s per device, the model FLOPs per sample (counted by
``torch.utils.flop_counter``) and, on CUDA, the model FLOPs utilisation against the
card's dense bf16 peak. On CPU the switches that only act on CUDA are skipped.

    python benchmarks/train_throughput.py --fast-paths [--preset base] [--steps 3]
        [--batch 8] [--compile] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any

import torch

from vilalign.commands import HelpFormatter
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
    preset: str,
    batch_size: int,
    steps: int,
    cache: bool,
    workers: int,
    train: dict[str, Any] | None = None,
    warmup_steps: int = 1,
) -> dict[str, float]:
    """Train ``steps`` steps (after warm-up steps) and return the loop's own timing.

    ``train`` overrides fields of the train config (the fast-path switches).
    """
    model = RANDOM_BASE if preset == "base" else {}
    cfg = FinetuneConfig(
        preset=preset,
        model=model,
        data={
            "name": "easyvqa",
            "limit": batch_size * (steps + warmup_steps),
            "cache": {"enabled": cache},
        },
        splits={"val_fraction": 0.0},
        train={
            "batch_size": batch_size,
            "epochs": 1,
            "progress": False,
            "num_workers": workers,
            **(train or {}),
        },
    )
    seed_everything(0)
    splits = build_splits(cfg)
    task = FinetuneTask(build_model(cfg.model.model_copy(update={"num_labels": 13})), "easyvqa")
    collate = Collator(load_tokenizer(cfg.model.text), max_length=cfg.model.text.max_length)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(task, cfg.train, cfg.optim, run_dir, splits.train, None, collate)
        trainer.cfg = cfg.train.model_copy(update={"max_steps": warmup_steps})
        trainer.train_epoch()  # warm-up: first-call allocations, lazy init, compilation
        trainer.progress.batch_in_epoch = trainer.progress.samples_in_epoch = 0
        trainer.cfg = cfg.train.model_copy(update={"max_steps": steps + warmup_steps})
        timing = trainer.train_epoch()
        timing["flops_per_sample"] = flops_per_sample(trainer, splits.train, collate)
        return timing


# Dense bf16 tensor-core peaks (FLOP/s) for the model FLOPs utilisation, by device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def flops_per_sample(trainer: Trainer, dataset: Any, collate: Any) -> float:
    """Model FLOPs of one training step (forward + backward) per sample, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = collate([dataset[i] for i in range(trainer.cfg.batch_size)])
    batch = batch.to(trainer.device)
    task = trainer.task
    with FlopCounterMode(display=False) as counter:
        with trainer._autocast():
            result = task(batch)
        result.loss.backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def fast_path_variants(compile_too: bool, cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, train overrides): the default, each switch flipped alone, and all off."""
    off = {
        "amp": "off",
        "fast": {
            "sdpa": False,
            "fused_adamw": False,
            "channels_last": False,
            "pin_memory": False,
            "tf32": False,
        },
    }
    variants: list[tuple[str, dict[str, Any]]] = [("default (all safe paths on)", {})]
    variants.append(("- SDPA (explicit softmax)", {"fast": {"sdpa": False}}))
    if cuda:
        variants += [
            ("- bf16 autocast (fp32)", {"amp": "off"}),
            ("- fused AdamW", {"fast": {"fused_adamw": False}}),
            ("- channels-last", {"fast": {"channels_last": False}}),
            ("- pinned memory", {"fast": {"pin_memory": False}}),
            ("- TF32", {"fast": {"tf32": False}}),
        ]
    else:
        variants.append(("+ bf16 autocast (CPU)", {"amp": "bf16"}))
    if compile_too:
        variants += [
            ("+ compile fusion layers", {"fast": {"compile_fusion": True}}),
            ("+ compile whole model", {"compile": True}),
        ]
    variants.append(("fp32 eager (everything off)", off))
    return variants


def fast_paths(preset: str, batch: int, steps: int, compile_too: bool, rounds: int) -> None:
    """Print the table; each variant's rate is the best of ``rounds`` interleaved runs (the
    run least disturbed by other load on a shared machine)."""
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    variants = fast_path_variants(compile_too, cuda)
    best: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for _ in range(rounds):
        for label, train in variants:
            warmup = 3 if "compile" in label else 1
            r = measure(preset, batch, steps, True, 0, train, warmup_steps=warmup)
            if label not in best or r["samples_per_s"] > best[label]["samples_per_s"]:
                best[label] = r
    print(
        f"fast paths, preset {preset}, batch {batch}/device, {steps} timed steps, best of "
        f"{rounds} on {device} ({time.perf_counter() - start:.0f} s)"
    )
    print(f"{'variant':32} {'samples/s':>10} {'x default':>9} {'GFLOP/sample':>12} {'MFU':>6}")
    base_rate = best[variants[0][0]]["samples_per_s"]
    for label, _ in variants:
        rate, flops = best[label]["samples_per_s"], best[label]["flops_per_sample"]
        mfu = f"{flops * rate / peak:6.1%}" if cuda and peak else f"{'-':>6}"
        print(f"{label:32} {rate:10.2f} {rate / base_rate:9.2f} {flops / 1e9:12.1f} {mfu}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["tiny", "base"],
        help="model presets to time, random weights",
    )
    parser.add_argument(
        "--tiny-steps",
        type=int,
        default=30,
        help="timed training steps of the tiny preset",
    )
    parser.add_argument(
        "--base-steps",
        type=int,
        default=3,
        help="timed training steps of the other presets",
    )
    parser.add_argument(
        "--tiny-batch",
        type=int,
        default=32,
        help="batch size of the tiny preset",
    )
    parser.add_argument(
        "--base-batch",
        type=int,
        default=8,
        help="batch size of the other presets",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader worker processes; 0 loads in the main process",
    )
    parser.add_argument("--fast-paths", action="store_true", help="compare the fast paths")
    parser.add_argument("--preset", default="base", help="--fast-paths: the preset")
    parser.add_argument("--steps", type=int, default=3, help="--fast-paths: timed steps")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="--fast-paths: batch per device",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="--fast-paths: also time torch.compile of the fusion layers and of the whole model",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--fast-paths: best of N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.fast_paths:
        fast_paths(args.preset, args.batch, args.steps, args.compile, args.rounds)
        return
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

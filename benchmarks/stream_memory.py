"""Memory while streaming WebDataset shards: flat over an epoch of 100k synthetic captions.

Writes ``--samples`` image-caption pairs (small JPEGs, distinct captions) into shards of
``--per-shard`` samples in a temporary folder (or ``--dir``), then reads one epoch the way
pretraining does — :class:`CaptionShards` (shuffle buffer) → DataLoader workers →
``Collator`` (tokenisation) — and samples the resident memory (RSS) of the main process
and of all its workers together every ``--every`` samples. A reader that kept samples,
shard contents or a growing index would show RSS rising with the samples read; a
streaming one stays flat after the first batches. Prints the table and the growth from
the first sample point to the last (and to the peak); asserts nothing.

    python benchmarks/stream_memory.py [--samples 100000] [--per-shard 5000]
        [--workers 2] [--batch 64] [--buffer 1000] [--image 64]
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from vilalign.commands import HelpFormatter
from vilalign.data import Collator, build_transform
from vilalign.data.captions import CaptionShards
from vilalign.model import load_tokenizer
from vilalign.train.config import RunConfig

MB = 2**20


def write_shards(folder: Path, samples: int, per_shard: int, image: int) -> str:
    """``samples`` pairs in shards; 16 distinct JPEGs cycled (decode cost is what matters)."""
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        pixels = rng.integers(0, 255, (image, image, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    shards = -(-samples // per_shard)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                caption = f"synthetic caption number {i}: a {i % 7} by {i % 11} grid of things"
                sink.write({"__key__": f"{i:09d}", "jpg": jpegs[i % 16], "txt": caption})
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def memory_mb(proc: psutil.Process) -> tuple[float, float, float, int]:
    """RSS of this process; RSS and PSS of it plus its DataLoader workers; worker count.

    PSS splits pages shared by several processes between them: forked workers share the
    parent's memory, which RSS would count once per worker (and which grows as Python
    touches shared objects, copy-on-write — bounded, not a leak).
    """
    children = proc.children(recursive=True)
    main = proc.memory_full_info()
    rss = main.rss + sum(c.memory_info().rss for c in children)
    pss = main.pss + sum(c.memory_full_info().pss for c in children)
    return main.rss / MB, rss / MB, pss / MB, len(children)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=100_000,
        help="image-caption pairs to write and read, one epoch",
    )
    parser.add_argument("--per-shard", type=int, default=5_000, help="samples per shard")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="DataLoader worker processes",
    )
    parser.add_argument("--batch", type=int, default=64, help="DataLoader batch size")
    parser.add_argument(
        "--buffer",
        type=int,
        default=1000,
        help="CaptionShards shuffle buffer, in samples",
    )
    parser.add_argument(
        "--image",
        type=int,
        default=64,
        help="JPEG side and encoder input, in pixels",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=10_000,
        help="samples between memory readings",
    )
    parser.add_argument("--dir", type=Path, help="shard folder to keep (default: temporary)")
    parser.add_argument(
        "--text-cache",
        type=int,
        default=0,
        help="Collator's token-id cache (distinct texts); pretraining on shards uses 0",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        tick = time.perf_counter()
        pattern = write_shards(folder, args.samples, args.per_shard, args.image)
        written = time.perf_counter() - tick
        size = sum(p.stat().st_size for p in folder.glob("*.tar")) / MB
        print(f"{args.samples} samples in {size:.0f} MB of shards, written in {written:.0f} s")

        cfg = RunConfig(model={"image": {"img_size": args.image}})
        data_config = {
            "input_size": (3, args.image, args.image),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        dataset = CaptionShards(
            pattern, build_transform(data_config), shuffle_buffer=args.buffer, seed=0
        )
        collate = Collator(
            load_tokenizer(cfg.model.text),
            max_length=cfg.model.text.max_length,
            text_cache_size=args.text_cache,
        )
        loader = DataLoader(
            dataset, batch_size=args.batch, num_workers=args.workers, collate_fn=collate
        )
        proc = psutil.Process()
        print(
            f"{'samples':>8} {'main RSS MB':>12} {'+workers RSS':>12} {'+workers PSS':>12} "
            f"{'samples/s':>10}"
        )
        seen, next_mark, readings = 0, 0, []
        tick = time.perf_counter()
        for batch in loader:
            seen += len(batch)
            # readings stop before the last batches: then workers finish and exit
            if next_mark <= seen < args.samples - args.batch * max(args.workers, 1):
                main_mb, rss, pss, _ = memory_mb(proc)
                readings.append((seen, main_mb, rss, pss))
                rate = seen / (time.perf_counter() - tick)
                print(f"{seen:8d} {main_mb:12.0f} {rss:12.0f} {pss:12.0f} {rate:10.0f}")
                next_mark += args.every
        # Growth from the second reading (shuffle buffers full, workers warm) to the last
        # one taken while the workers still ran; the first reading is start-up.
        warm, last = readings[min(1, len(readings) - 1)], readings[-1]
        print(
            f"epoch of {seen} samples, from {warm[0]} to {last[0]} samples: PSS (main + "
            f"workers) {warm[3]:.0f} -> {last[3]:.0f} MB ({last[3] - warm[3]:+.0f} MB), RSS "
            f"{warm[2]:.0f} -> {last[2]:.0f} MB ({last[2] - warm[2]:+.0f} MB), main process "
            f"{warm[1]:.0f} -> {last[1]:.0f} MB; the shards hold {size:.0f} MB"
        )


if __name__ == "__main__":
    main()

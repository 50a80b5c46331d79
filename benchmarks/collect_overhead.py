"""What collecting per-layer representations costs over a plain evaluation pass.

Both run the tiny model over the same pre-built batches (no data loading in the timing),
interleaved and repeated; the ratio collect / plain is printed. Target: ≤ ~1.10×.

    python benchmarks/collect_overhead.py [--n 1024] [--batch-size 64] [--repeats 5] [--threads 1]

On a shared machine, --threads 1 keeps other processes' load from swamping the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vilalign.analysis.collect import collect
from vilalign.commands import HelpFormatter
from vilalign.config import model_config
from vilalign.data.types import Batch
from vilalign.model import build_model


def make_batches(n: int, batch_size: int, seq_len: int, img: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lengths = torch.randint(4, seq_len + 1, (b,), generator=g)
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
        batches.append(
            Batch(
                input_ids=torch.randint(1000, 30000, (b, seq_len), generator=g) * mask,
                attention_mask=mask,
                token_type_ids=torch.zeros_like(mask),
                pixel_values=torch.randn(b, 3, img, img, generator=g),
                ids=[str(start + i) for i in range(b)],
            )
        )
    return batches


@torch.no_grad()
def plain_pass(model, batches: list[Batch]) -> None:
    for b in batches:
        model(b.input_ids, b.attention_mask, b.pixel_values, b.token_type_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--n", type=int, default=1024, help="samples per pass (N)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed passes of each variant, median reported",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg).eval()
    batches = make_batches(args.n, args.batch_size, cfg.text.max_length, cfg.image.img_size)
    variants = {
        "plain eval pass": lambda: plain_pass(model, batches),
        "collect cls+mean, fusion layers": lambda: collect(
            model, batches, args.n, ("cls", "mean"), progress=False
        ),
        "collect cls+mean, + encoder layers": lambda: collect(
            model, batches, args.n, ("cls", "mean"), include_encoders=True, progress=False
        ),
        "collect cls+mean+tokens, fusion": lambda: collect(
            model, batches, args.n, ("cls", "mean", "tokens"), progress=False
        ),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine noise
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain eval pass"])
    print(f"tiny model, N={args.n}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:38s} {t:7.3f} s   {t / base:5.2f}x")
    print("target: collection <= ~1.10x the plain pass")


if __name__ == "__main__":
    main()

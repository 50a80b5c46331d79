"""Coverage of every registered measure's default 95 % interval on cases with a known answer.

For each measure: draw N paired samples from a known distribution, compute the interval
the measure registers (``stats.confidence_interval``), and count how often it covers the
quantity it targets, over ``--repeats`` independent draws at each N. The estimands
(``vilalign.analysis.coverage``):

* population values known analytically (x ~ N(0, I5), y = x + equal-variance noise:
  linear CKA 0.5, canonical correlations all 1/√2, Procrustes 1/√2, R²_CCA 0.5);
* population values from one very large sample (RBF CKA, RSA, paired cosine, MaxSim);
* E[θ̂_N], the expected value at this N, from many independent draws, for measures whose
  value depends on N by definition (k-NN family with a fixed k, CKNNA, Wasserstein).

Prints the table docs/statistics.md holds (markdown) and, with ``--csv``, writes it.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/coverage.py --repeats 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vilalign.analysis import measures as M
from vilalign.analysis.coverage import coverage
from vilalign.commands import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--repeats",
        type=int,
        default=100,
        help="independent draws per measure and N",
    )
    p.add_argument("--sizes", default="60,240", help="comma list of sample counts N")
    p.add_argument(
        "--resamples",
        type=int,
        default=None,
        help="half-samples behind each interval (default: the analysis default, 100)",
    )
    p.add_argument(
        "--measures",
        default="",
        help="comma list of measures to check (default: every registered one)",
    )
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file (default: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [m for m in args.measures.split(",") if m] or list(M.REGISTRY)
    rows = []
    for name in names:
        for n in sizes:
            start = time.perf_counter()
            row = coverage(name, n, args.repeats, resamples=args.resamples)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(markdown(table))
    return 0


def markdown(table: pd.DataFrame) -> str:
    """measure | interval | estimand | coverage at each N, as a markdown table."""
    wide = table.pivot_table(
        index=["measure", "interval", "estimand"], columns="n", values="coverage", sort=False
    ).reset_index()
    sizes = [c for c in wide.columns if isinstance(c, int | float)]
    head = ["measure", "interval", "estimand", *(f"N = {n}" for n in sizes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in wide.itertuples(index=False):
        cells = [r[0], r[1], r[2], *(f"{v:.3f}" for v in r[3:])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

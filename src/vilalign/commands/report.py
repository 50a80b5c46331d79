"""``vilalign report``: one self-contained HTML page for an experiment or run folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write report.html for an experiment or run folder",
        description=(
            "Read an experiment folder (written by `vilalign run` or `vilalign demo`) or a "
            "single run folder and write one self-contained HTML page (images embedded): "
            "downstream metrics across cells (mean ± std over seeds), training curves, "
            "alignment by layer per measure with co-attention layers and null bands marked, "
            "alignment over epochs, attention entropy, attribution examples, then the tables "
            "and the configuration."
        ),
    )
    p.add_argument("directory", type=Path, help="experiment or run folder")
    p.add_argument("--out", type=Path, help="output file (default: DIRECTORY/report.html)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.report import write_report

    print(f"wrote {write_report(args.directory, args.out)}")
    return 0

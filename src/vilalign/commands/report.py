"""``vilalign report``: one self-contained HTML page for an experiment or run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import add_command, add_deprecated_alias, add_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "report",
        help="write report.html for an experiment, run or analyse folder",
        description=(
            "Read an experiment folder (written by `vilalign run` or `vilalign demo`), a "
            "single run folder or a `vilalign analyse` folder and write one self-contained "
            "HTML page (images embedded): the answer in words with intervals first, then "
            "downstream metrics across cells (mean ± std over seeds), training curves, "
            "alignment by layer per measure (every model on shared axes, interval and null "
            "bands, co-attention layers marked), alignment over epochs from epoch 0, the "
            "layer x layer matrices on one colour scale, attention concentration, "
            "attribution examples, then the tables and the configuration."
        ),
    )
    p.add_argument("directory", type=Path, help="experiment, run or analyse folder")
    add_output_dir(p, None, "folder for report.html (default: DIRECTORY)")
    # The old option named the file itself; it keeps doing so until it goes.
    add_deprecated_alias(p, "--out", "--output-dir DIR (writes DIR/report.html)", "out_file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.report import REPORT_FILE, write_report

    out = getattr(args, "out_file", None)
    if out is None and args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        out = args.output_dir / REPORT_FILE
    print(f"wrote {write_report(args.directory, out)}")
    return 0

"""``vilalign report``: one self-contained HTML page for an experiment or run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import add_command, add_deprecated_alias, add_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
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

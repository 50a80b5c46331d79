"""The ``vilalign`` command: a thin layer over the library.

Each sub-command parses its arguments, calls library functions, and prints a short
summary. Nothing here computes anything the library cannot do on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vilalign import __version__

DESCRIPTION = """\
vilalign: ViLBERT-style two-stream vision-language transformers, and layer-wise
measures of how their text and image streams align.

Start with `vilalign demo` (CPU, a few minutes, uses the easy-VQA data shipped by the
easy-vqa package). Every command explains itself with --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vilalign",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vilalign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from vilalign.commands import register

    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun only rank 0 logs progress; the other ranks report warnings and errors.
    quiet = int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    from vilalign.config import ConfigError

    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        if args.verbose:  # the traceback, for bug reports
            raise
        print(f"vilalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

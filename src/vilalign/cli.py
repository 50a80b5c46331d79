"""The ``vilalign`` command: a thin layer over the library.

Each sub-command parses its arguments, calls library functions, and prints a short
summary. Nothing here computes anything the library cannot do on its own. Building the
parser imports no torch (see vilalign.commands), so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from vilalign import __version__

DESCRIPTION = """\
vilalign: ViLBERT-style two-stream vision-language transformers, and layer-wise
measures of how their text and image streams align.

Start with `vilalign demo` (CPU, a few minutes, uses the easy-VQA data shipped by the
easy-vqa package). Every command explains itself with --help; the options that several
commands share mean the same on each: --output-dir, --set KEY=VALUE, --device, --threads,
--no-progress, -v.
"""

logger = logging.getLogger("vilalign")


def build_parser() -> argparse.ArgumentParser:
    from vilalign.commands import add_verbose, register

    parser = argparse.ArgumentParser(
        prog="vilalign",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vilalign {__version__}")
    add_verbose(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    # Under torchrun only rank 0 logs progress; the other ranks report warnings and errors.
    quiet = int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Deprecated spellings warn while parsing, before logging is set up: keep the
    # warnings and log them as one line each once it is.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    for warning in caught:
        logger.warning("%s", warning.message)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    from vilalign.commands import apply_threads, run_handler

    try:
        apply_threads(args)
        return run_handler(args)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"vilalign {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose or not isinstance(err, user_errors()):  # the traceback: a bug report
            raise
        print(f"vilalign {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that say what to fix, printed as one line with exit code 2 (the one
    place that decides it): ValueError (ConfigError, pydantic's ValidationError, bad
    options), OSError (missing, unreadable, read-only or occupied files and folders, a
    full disk, bad image files, a tracking store that cannot be opened) and the training's
    non-finite stop. The last is looked up only once the training code is loaded:
    importing it here would load torch for every command."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    loop = sys.modules.get("vilalign.train.loop")
    if loop is not None:
        errors.append(loop.NonFiniteLossError)
    return tuple(errors)


def one_line(err: BaseException) -> str:
    """``err`` as one line: a validation error as ``field: message`` pairs, any other
    message with its lines joined."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        from vilalign.config import describe_validation_error

        return describe_validation_error(err)
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())

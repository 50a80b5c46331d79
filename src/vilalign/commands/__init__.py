"""Sub-commands of ``vilalign``: modules with ``add_parser(subparsers)`` (one or more commands)."""

from __future__ import annotations

import argparse
import importlib

# Order = order in `vilalign --help`.
COMMANDS = ("training", "analyse", "info")


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in COMMANDS:
        importlib.import_module(f"vilalign.commands.{name}").add_parser(subparsers)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset and --baseline, shared by the commands that build a model."""
    p.add_argument(
        "--preset", default="tiny", help="model preset: tiny, base or minilm (default: tiny)"
    )
    p.add_argument(
        "--baseline",
        default="vilbert",
        help="vilbert, no_coattention, concat_features or random_text (default: vilbert)",
    )

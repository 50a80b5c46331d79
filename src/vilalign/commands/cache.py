"""``vilalign cache``: list the preprocessed-image caches and delete the ones not needed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vilalign.commands import add_command, add_deprecated_alias


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "cache",
        help="list or delete the preprocessed-image caches",
        description="Every dataset × image size × limit gets a cache folder of decoded, resized "
        "images (under $VILALIGN_CACHE, else ~/.cache/vilalign); a run that finds one reuses "
        "it, and a deleted one is rebuilt when next needed. Without options: list them, "
        "least recently used first. Caches of an earlier format ('old') are never read again; "
        "'incomplete' ones are builds a crash left behind.",
    )
    # --cache-dir, not --output-dir: the folder holds what every run reads (data.cache.dir
    # in a run file), and this command only lists or deletes in it.
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="cache folder (default: $VILALIGN_CACHE, else $XDG_CACHE_HOME/vilalign, else "
        "~/.cache/vilalign)",
    )
    add_deprecated_alias(p, "--dir", "--cache-dir", "cache_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="delete the caches not used for DAYS days, and all 'old' or 'incomplete' ones",
    )
    which.add_argument("--clear", action="store_true", help="delete every cache")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.data.cache import default_cache_dir, list_caches, remove_cache

    if args.older_than is not None and args.older_than < 0:
        raise ValueError(f"--older-than: needs a number of days >= 0, got {args.older_than}")
    root = args.cache_dir or default_cache_dir()
    entries = list_caches(root)
    if args.clear or args.older_than is not None:
        cutoff = time.time() - 86400 * (args.older_than or 0)
        doomed = [e for e in entries if args.clear or e.state != "ready" or e.last_used < cutoff]
        for entry in doomed:
            remove_cache(entry)
        freed = sum(e.size_bytes for e in doomed)
        print(f"deleted {len(doomed)} of {len(entries)} caches in {root}: {_size(freed)} freed")
        return 0
    if not entries:
        print(f"no image caches in {root}")
        return 0
    print(f"{'last used':<17} {'images':>7} {'shape':>11} {'size':>9}  folder ({root})")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        shape = "x".join(map(str, e.shape)) if e.state == "ready" else e.state
        print(f"{used:<17} {e.images:>7} {shape:>11} {_size(e.size_bytes):>9}  {e.name}")
    total = sum(e.size_bytes for e in entries)
    print(f"{len(entries)} caches, {_size(total)}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

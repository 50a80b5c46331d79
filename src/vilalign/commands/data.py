"""``vilalign data``: the datasets vilalign reads, and the sample ids of a split."""

from __future__ import annotations

import argparse

from vilalign.commands import DATASET_HELP, ROOT_HELP, add_command, data_config, positive_int

#: Texts longer than this are cut in the listing (an MM-IMDb plot is a paragraph).
TEXT_WIDTH = 100


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "data",
        help="list the datasets, or the sample ids of a split (for explain --ids)",
        description="Look at the datasets vilalign reads without running a model.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ids = add_command(
        actions,
        "ids",
        help="print the sample ids of a split, one per line with its text",
        description=(
            "Print each sample's id and text (tab-separated, one sample per line) in the "
            "order the dataset reads them; these are the ids `vilalign explain --ids` takes. "
            "Only the annotation files are read: no image is decoded (missing image files "
            "are still an error, as in any run)."
        ),
    )
    ids.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    ids.add_argument(
        "split", metavar="SPLIT", help="split name, e.g. test (`vilalign data list` shows them)"
    )
    ids.add_argument("--root", help=ROOT_HELP)
    ids.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the first N samples (default: all)"
    )
    ids.set_defaults(handler=run_ids)
    names = add_command(
        actions,
        "list",
        help="print every dataset name with its splits",
        description="Print every dataset vilalign can read, with its split names (and the "
        "names an earlier release of the data used for some, which are read too).",
    )
    names.set_defaults(handler=run_list)


def run_ids(args: argparse.Namespace) -> int:
    from vilalign.data import build_dataset

    # No cache and the 'error' policy: the images are only checked to exist, never decoded
    # (decoding is what the transform does, so none is needed).
    cfg = data_config(args, limit=args.limit, cache={"enabled": False})
    dataset = build_dataset(cfg, args.split, transform=None)  # type: ignore[arg-type]
    records = getattr(dataset, "records", None)
    if records is None:
        raise ValueError(f"{args.dataset}: streams its samples from shards; it has no id list")
    for record in records:
        print(f"{record.id}\t{_one_line(record.text)}")
    return 0


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    from vilalign.data import SPLITS, dataset_info

    width = max(map(len, SPLITS))
    for name, splits in SPLITS.items():
        aliases = ", ".join(f"{a} = {s}" for a, s in dataset_info(name).split_aliases)
        also = f"  (also {aliases})" if aliases else ""
        print(f"{name:<{width}}  {', '.join(splits)}{also}")
    return 0

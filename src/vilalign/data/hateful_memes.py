"""Hateful Memes (Kiela et al., 2020) in its published layouts.

``<root>/img/<id>.png`` and one JSON-lines file per split — ``train`` (8,500 lines),
``dev_seen`` (500), ``dev_unseen`` (540), ``test_seen`` (1,000), ``test_unseen`` (2,000) —
each line ``{"id", "img": "img/<id>.png", "label", "text"}``. Test files may lack
``label``; the sample's label is then None. Binary label (1 = hateful).

The first release (May 2020, still what many copies hold) named its files ``train``,
``dev`` and ``test``: its ``dev`` set is the later ``dev_seen`` (the same 500 memes) and its
``test`` set the later ``test_seen``. Either name reads either file: ``dev`` reads
``dev.jsonl`` when the folder has one, else ``dev_seen.jsonl``, and ``dev_seen`` reads
``dev_seen.jsonl``, else ``dev.jsonl`` (likewise ``test`` / ``test_seen``).

A label must be the integer 0 or 1; anything else (``1.0``, ``"1"``, ``3``) is a bad
record (``data.on_bad_record``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vilalign.data.base import Record, SplitDataset
from vilalign.data.files import read_jsonl, require
from vilalign.data.images import DataFormatError
from vilalign.data.records import BadRecords
from vilalign.data.registry import register_dataset
from vilalign.data.types import DatasetInfo, TaskInfo

SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")
#: (first-release name, the split it is): the first release's files hold these splits.
FIRST_RELEASE = (("dev", "dev_seen"), ("test", "test_seen"))
LABEL_NAMES = ("not hateful", "hateful")


def split_file(root: Path, split: str) -> Path:
    """The file of ``split``: its own name first, else the other release's name for it."""
    names = [split]
    for old, new in FIRST_RELEASE:
        names += [new] if split == old else [old] if split == new else []
    for name in names:
        if (root / f"{name}.jsonl").is_file():
            return root / f"{name}.jsonl"
    tried = " nor ".join(f"{n}.jsonl" for n in names)
    raise DataFormatError(f"{root}: hateful_memes split {split!r} not found (no {tried})")


def _record(root: Path, obj: dict[str, Any], where: str, labelled: bool) -> Record:
    label = obj.get("label")
    if label is None and labelled:
        raise DataFormatError(f"{where}: missing field 'label'")
    # bool is an int, and 1.0 == 1: a type check, so every label is the same integer type
    if label is not None and (type(label) is not int or label not in (0, 1)):
        raise DataFormatError(
            f"{where}: unknown label {label!r} (field 'label' must be the integer 0 or 1)"
        )
    image = str(require(obj, "img", where))  # "img/<id>.png": the meme's image file
    return Record(
        id=str(require(obj, "id", where)),
        image=str(root / image),
        image_id=image,
        text=str(require(obj, "text", where)),
        target=label,
    )


def records(root: str | Path, split: str, bad: BadRecords | None = None) -> list[Record]:
    """The records of the split's file; a label is required outside test splits."""
    root, bad = Path(root), bad or BadRecords()
    path = split_file(root, split)
    labelled = not split.startswith("test")
    out = [
        bad.attempt(_record, root, obj, f"{path}:{lineno}", labelled)
        for lineno, obj in read_jsonl(path, bad)
    ]
    return [r for r in out if r is not None]


@register_dataset
class HatefulMemes(SplitDataset):
    """Hateful Memes: meme image + its overlaid text, binary label (long scalar)."""

    info = DatasetInfo(
        name="hateful_memes",
        splits=SPLITS,
        num_labels=2,
        task=TaskInfo(loss="binary", monitor="auroc"),  # the challenge's metric
        label_names=LABEL_NAMES,
        split_aliases=FIRST_RELEASE,
    )
    read_records = staticmethod(records)

"""Hateful Memes (Kiela et al., 2020) in its published layout.

``<root>/img/<id>.png`` and one JSON-lines file per split — ``train`` (8,500 lines),
``dev_seen`` (500), ``dev_unseen`` (540), ``test_seen`` (1,000), ``test_unseen`` (2,000) —
each line ``{"id", "img": "img/<id>.png", "label", "text"}``. Test files may lack
``label``; the sample's label is then None. Binary label (1 = hateful).
"""

from __future__ import annotations

from pathlib import Path

from vilalign.data.base import Record, SplitDataset
from vilalign.data.files import read_jsonl, require
from vilalign.data.images import DataFormatError
from vilalign.data.registry import register_dataset
from vilalign.data.types import DatasetInfo, TaskInfo

SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")


def records(root: str | Path, split: str) -> list[Record]:
    """The records of ``<root>/<split>.jsonl``; a label is required outside test splits."""
    root = Path(root)
    path = root / f"{split}.jsonl"
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        label = obj.get("label")
        if label is None and not split.startswith("test"):
            raise DataFormatError(f"{where}: missing field 'label'")
        if label is not None and label not in (0, 1):
            raise DataFormatError(f"{where}: unknown label {label!r} (allowed: 0, 1)")
        image = str(require(obj, "img", where))  # "img/<id>.png": the meme's image file
        out.append(
            Record(
                id=str(require(obj, "id", where)),
                image=str(root / image),
                image_id=image,
                text=str(require(obj, "text", where)),
                target=label,
            )
        )
    return out


@register_dataset
class HatefulMemes(SplitDataset):
    """Hateful Memes: meme image + its overlaid text, binary label (long scalar)."""

    info = DatasetInfo(
        name="hateful_memes",
        splits=SPLITS,
        num_labels=2,
        task=TaskInfo(loss="binary", monitor="auroc"),  # the challenge's metric
    )
    read_records = staticmethod(records)

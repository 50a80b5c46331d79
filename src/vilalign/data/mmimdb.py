"""MM-IMDb (Arevalo et al., 2017) in its published layout.

``<root>/split.json`` maps ``train`` / ``dev`` / ``test`` to id lists (15,552 / 2,608 /
7,799); ``<root>/dataset/<id>.jpeg`` is the poster and ``<root>/dataset/<id>.json`` the
metadata (``genres``, ``plot`` — a list of plot summaries, of which the longest is the
text, as the published baselines do — ``title``, ...). The label is a multi-hot float
vector over the 23 genres Arevalo et al. kept, in their order. Genres outside those 23 are
rare in the data and ignored (logged), as in the original work, rather than an error; a
movie with none of the 23 (only ``Reality-TV``, say) would get an all-zero label and is a
bad record instead (``data.on_bad_record``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from vilalign.data.base import Record, SplitDataset
from vilalign.data.files import read_json, require
from vilalign.data.images import DataFormatError
from vilalign.data.records import BadRecords
from vilalign.data.registry import register_dataset
from vilalign.data.types import DatasetInfo, TaskInfo

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
GENRES = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
    "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir",
)  # fmt: skip
_GENRE_INDEX = {g: i for i, g in enumerate(GENRES)}


def _split_ids(root: Path, split: str) -> list[str]:
    path = root / "split.json"
    splits = read_json(path)
    if not isinstance(splits, dict) or split not in splits:
        raise DataFormatError(f"{path}: missing field {split!r}")
    if not isinstance(splits[split], list) or not splits[split]:
        raise DataFormatError(f"{path}: field {split!r} lists no movies")
    return [str(i) for i in splits[split]]


def _record(root: Path, movie_id: str, ignored: Counter[str]) -> Record:
    path = root / "dataset" / f"{movie_id}.json"
    meta = read_json(path)
    genres = require(meta, "genres", str(path))
    plots = require(meta, "plot", str(path))
    if not isinstance(genres, list) or not isinstance(plots, list) or not plots:
        raise DataFormatError(f"{path}: 'genres' and 'plot' must be non-empty lists")
    target = sorted({_GENRE_INDEX[g] for g in genres if g in _GENRE_INDEX})
    if not target:
        raise DataFormatError(
            f"{path}: field 'genres': none of {genres} is one of the 23 MM-IMDb genres "
            "(the label would be all zeros)"
        )
    ignored.update(g for g in genres if g not in _GENRE_INDEX)
    return Record(
        id=movie_id,
        image=str(root / "dataset" / f"{movie_id}.jpeg"),
        image_id=movie_id,  # one poster per movie
        text=max(plots, key=len),
        target=target,
    )


def records(root: str | Path, split: str, bad: BadRecords | None = None) -> list[Record]:
    """One record per movie id of ``split``; target = indices of its genres."""
    root, bad = Path(root), bad or BadRecords()
    ignored: Counter[str] = Counter()
    out = [bad.attempt(_record, root, movie_id, ignored) for movie_id in _split_ids(root, split)]
    if ignored:
        logger.info("mmimdb %s: ignored genres outside the 23: %s", split, dict(ignored))
    return [r for r in out if r is not None]


@register_dataset
class MMIMDb(SplitDataset):
    """MM-IMDb: poster + longest plot, 23-genre multi-hot label (float)."""

    info = DatasetInfo(
        name="mmimdb",
        splits=SPLITS,
        num_labels=len(GENRES),
        task=TaskInfo(loss="multilabel", monitor="f1_micro"),
        label_names=GENRES,
    )
    read_records = staticmethod(records)

    def label_tensor(self, target: Any) -> torch.Tensor:
        label = torch.zeros(len(GENRES))
        label[list(target)] = 1.0
        return label

"""MS-COCO and Flickr30k captions in Karpathy's split files (``dataset_coco.json``,
``dataset_flickr30k.json``), read by one reader.

The file (Karpathy & Fei-Fei, 2015; ``caption_datasets.zip``) is::

    {"dataset": "coco" | "flickr30k" | "flickr8k",
     "images": [{"filename": "COCO_val2014_000000391895.jpg", "filepath": "val2014",
                 "imgid": 0, "split": "train" | "val" | "test" | "restval",
                 "sentids": [...],
                 "sentences": [{"raw": "A man ...", "tokens": [...], "imgid": 0,
                                "sentid": 770337}, ...]}, ...]}

COCO images lie under ``<root>/<filepath>/<filename>``; Flickr entries have no ``filepath``
and lie under ``<root>/<filename>`` or ``<root>/flickr30k-images/<filename>`` (both
layouts are found). ``restval`` (30,504 COCO val2014 images outside the 5k val/test) is
merged into ``train`` by default, as Karpathy's own training does: 113,287 / 5,000 / 5,000
COCO images; Flickr30k has 29,000 / 1,014 / 1,000 and no restval.

Samples carry the ``raw`` sentence (what a BERT tokenizer should see, not the lower-cased
``tokens``), the id ``"<imgid>#<j>"`` where ``j`` is the caption's position in the
image's ``sentences``, and the image id ``"<imgid>"``. With ``caption=None`` every caption
of every image is a sample: alignment-prediction negatives never pair an image with
another of its own captions, and the analysis can average the representations of an
image's captions (grouped by image id, see :mod:`vilalign.analysis.retrieval`); an integer
``caption`` gives one sample per image with that caption.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.config import CacheConfig, DataConfig
from vilalign.data.files import read_json, require
from vilalign.data.images import DataFormatError, OnBadImage
from vilalign.data.records import BadRecords, OnBadRecord
from vilalign.data.registry import register_dataset
from vilalign.data.transforms import ImageTransform
from vilalign.data.types import DatasetInfo

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FILE_SPLITS = ("train", "val", "test", "restval")  # the values of the ``split`` field
FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
FLICKR_IMAGE_DIRS = ("", "flickr30k-images")  # relative to root, in the order looked up
_PROBE = 20  # images looked up to decide the Flickr layout (cheap stats, not a full scan)


def read_karpathy(path: str | Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """The ``images`` list of a Karpathy split file, its top-level fields checked.

    ``dataset``, if given, must equal the file's ``dataset`` field (when it has one), so a
    Flickr file passed as COCO fails instead of giving wrong image paths.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object with an 'images' list")
    images = require(data, "images", str(path))
    if not isinstance(images, list):
        raise DataFormatError(f"{path}: field 'images' must be a list")
    found = data.get("dataset")
    if dataset is not None and found is not None and found != dataset:
        raise DataFormatError(f"{path}: field 'dataset' is {found!r}, expected {dataset!r}")
    return images


def _split_of(entry: dict[str, Any], where: str) -> str:
    split = require(entry, "split", where)
    if split not in FILE_SPLITS:
        raise DataFormatError(
            f"{where}: field 'split' is {split!r} (allowed: {', '.join(FILE_SPLITS)})"
        )
    return split


def _wanted(split: str, merge_restval: bool) -> set[str]:
    allowed = (*SPLITS, "restval")
    if split not in allowed:
        raise ValueError(f"karpathy: unknown split {split!r} (allowed: {', '.join(allowed)})")
    return {"train", "restval"} if split == "train" and merge_restval else {split}


def _captions(entry: dict[str, Any], where: str, max_captions: int | None) -> list[str]:
    sentences = require(entry, "sentences", where)
    if not isinstance(sentences, list) or not sentences:
        raise DataFormatError(f"{where}: field 'sentences' must be a non-empty list")
    texts = []
    for j, sentence in enumerate(sentences[:max_captions]):
        if not isinstance(sentence, dict):
            raise DataFormatError(f"{where}.sentences[{j}]: expected an object")
        raw = require(sentence, "raw", f"{where}.sentences[{j}]")
        if not isinstance(raw, str) or not raw.strip():
            raise DataFormatError(f"{where}.sentences[{j}]: field 'raw' must be a non-empty string")
        texts.append(raw.strip())  # COCO raws carry stray trailing spaces and newlines
    return texts


def _image_records(
    entry: dict[str, Any],
    where: str,
    image: str,
    caption: int | None,
    max_captions: int | None,
) -> list[Record]:
    """The records of one image: all its captions, or only caption number ``caption``."""
    imgid = require(entry, "imgid", where)
    texts = _captions(entry, where, max_captions)
    if caption is None:
        return [
            Record(id=f"{imgid}#{j}", image=image, image_id=str(imgid), text=t)
            for j, t in enumerate(texts)
        ]
    if caption >= len(texts):
        raise DataFormatError(
            f"{where}: image {imgid} has {len(texts)} caption(s), no caption {caption}"
        )
    return [Record(id=f"{imgid}#{caption}", image=image, image_id=str(imgid), text=texts[caption])]


def _entries(path: Path, images: list[Any], wanted: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(where, entry) of the images in the wanted splits, in file order."""
    out = []
    for i, entry in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: expected an object")
        if _split_of(entry, where) in wanted:
            out.append((where, entry))
    return out


def _relative_path(entry: dict[str, Any], where: str) -> str:
    filename = require(entry, "filename", where)
    filepath = entry.get("filepath")
    return f"{filepath}/{filename}" if filepath else str(filename)


def _image_dir(root: Path, entries: Sequence[tuple[str, dict[str, Any]]]) -> Path:
    """``root`` or ``root/flickr30k-images`` for entries without ``filepath`` (Flickr).

    Decided from the first images of the split, so a few missing files still go through
    the ``on_bad_image`` policy; if none of them is in either place the root is wrong,
    and the error names the paths looked up.
    """
    flat = [(w, e) for w, e in entries if not e.get("filepath")]
    if not flat:
        return root
    names = [_relative_path(e, w) for w, e in flat[:_PROBE]]
    for sub in FLICKR_IMAGE_DIRS:
        if any((root / sub / n).is_file() for n in names):
            return root / sub
    looked = " nor ".join(str(root / sub / names[0]) for sub in FLICKR_IMAGE_DIRS)
    raise DataFormatError(f"image {names[0]} not found: looked for {looked}")


def records(
    path: str | Path,
    root: str | Path,
    split: str,
    caption: int | None = None,
    merge_restval: bool = True,
    max_captions: int | None = 5,
    dataset: str | None = None,
) -> list[Record]:
    """The records of ``split`` (file order; per image, caption order).

    ``caption``: None for one record per (image, caption), else that caption index only.
    ``max_captions``: keep each image's first captions only (a few COCO images have 6 or
    7; the standard 5k/1k retrieval test sets use 5); None keeps all.
    """
    path, root = Path(path), Path(root)
    if caption is not None and caption < 0:
        raise ValueError(f"caption: need an index >= 0 or None, got {caption}")
    if caption is not None and max_captions is not None and caption >= max_captions:
        raise ValueError(f"caption: index {caption} is beyond max_captions={max_captions}")
    wanted = _wanted(split, merge_restval)
    entries = _entries(path, read_karpathy(path, dataset), wanted)
    image_dir = _image_dir(root, entries)
    out: list[Record] = []
    for where, entry in entries:
        image = str(image_dir / _relative_path(entry, where))
        out += _image_records(entry, where, image, caption, max_captions)
    _check_unique(out, path)
    return out


def _check_unique(recs: list[Record], path: Path) -> None:
    seen: set[str] = set()
    for r in recs:
        if r.id in seen:
            raise DataFormatError(f"{path}: field 'imgid' repeats ({r.image_id})")
        seen.add(r.id)


class KarpathyCaptions(ImageTextDataset):
    """Caption samples (no label) of one split of a Karpathy split file.

    ``annotations`` is the JSON file, ``root`` the image folder (see the module docstring).
    ``len(self.images)`` is the number of images; ``len(self)`` the number of samples.
    Registered by name through its subclasses, one per ``source`` (a key of ``FILES``).
    """

    source: ClassVar[str]

    def __init__(
        self,
        annotations: str | Path,
        root: str | Path,
        split: str,
        transform: ImageTransform,
        caption: int | None = None,
        merge_restval: bool = True,
        max_captions: int | None = 5,
        dataset: str | None = None,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        recs = records(annotations, root, split, caption, merge_restval, max_captions, dataset)
        name = dataset or Path(annotations).stem.removeprefix("dataset_")
        bad = BadRecords(on_bad_record)
        super().__init__(f"{name}-{split}", recs, transform, on_bad_image, cache, limit, bad)

    @classmethod
    def from_config(
        cls, cfg: DataConfig, split: str, transform: ImageTransform
    ) -> KarpathyCaptions:
        """``<cfg.root>/dataset_<source>.json`` with images under ``cfg.root``: restval
        merged into train, the first 5 captions, every caption or caption ``cfg.caption``
        (other modes: construct :class:`KarpathyCaptions`)."""
        root = Path(cfg.root or ".")
        return cls(
            root / FILES[cls.source],
            root,
            split,
            transform,
            caption=cfg.caption,
            dataset=cls.source,
            **cfg.reader_options(),
        )

    @property
    def images(self) -> list[str]:
        """The image id of every sample, each once, in order."""
        return list(dict.fromkeys(r.image_id for r in self.records))


@register_dataset
class CocoKarpathy(KarpathyCaptions):
    """MS-COCO in Karpathy's split by name (``data.name: coco_karpathy``):
    ``<root>/dataset_coco.json``, images under ``root``."""

    info = DatasetInfo(name="coco_karpathy", splits=SPLITS, several_captions=True)
    source = "coco"


@register_dataset
class Flickr30kKarpathy(KarpathyCaptions):
    """Flickr30k in Karpathy's split by name (``data.name: flickr30k_karpathy``):
    ``<root>/dataset_flickr30k.json``, images under ``root`` (either layout)."""

    info = DatasetInfo(name="flickr30k_karpathy", splits=SPLITS, several_captions=True)
    source = "flickr30k"

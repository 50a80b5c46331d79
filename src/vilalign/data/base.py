"""The map-style dataset every file-based reader shares.

A reader's only job is to parse its format into :class:`Record` s (id, image file, text,
compact target), passing a record it cannot use to its
:class:`~vilalign.data.records.BadRecords` (the ``on_bad_record`` policy).
:class:`ImageTextDataset` does the rest the same way for all of them: checks the image
files, applies the ``on_bad_image`` policy, builds or opens the image cache, and turns
records into :class:`Sample` s.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from vilalign.data.cache import ImageCache, open_or_build
from vilalign.data.config import CacheConfig, DataConfig
from vilalign.data.images import BadImageError, BadImageLog, OnBadImage, load_image
from vilalign.data.records import BadRecords, OnBadRecord
from vilalign.data.transforms import ImageTransform
from vilalign.data.types import DatasetInfo, Sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One sample before its image is read; ``target`` is turned into the label tensor.

    ``image_id`` is the reader's name for the image (``Sample.image_id``): records that
    show the same image share it.
    """

    id: str
    image: str  # path of the image file
    image_id: str
    text: str
    target: Any = None


class ImageTextDataset(Dataset[Sample]):
    """Records + images → :class:`Sample`; bad images handled and counted once, up front.

    Under ``on_bad_image="error"`` a missing file fails here, naming it; a corrupt one fails
    while the cache is built (or, without a cache, when the sample is read). Under
    ``"skip"`` every image is checked here (by the cache build, else by decoding it) and
    samples with bad images are dropped; ``bad_images`` lists them and ``skipped`` counts
    the dropped samples (also those whose records the reader skipped: ``bad_records``).

    A registered subclass declares itself in ``info`` (see
    :func:`vilalign.data.registry.register_dataset`) and builds itself in ``from_config``.
    """

    info: ClassVar[DatasetInfo]

    def __init__(
        self,
        name: str,
        records: Sequence[Record],
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        bad_records: BadRecords | None = None,
    ) -> None:
        self.name = name
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.bad_images = BadImageLog()
        self.bad_records = bad_records or BadRecords()
        self.bad_records.report(name)
        records = list(records[:limit] if limit else records)
        total = len(records)
        records = self._drop_missing(records)
        self.cache: ImageCache | None = None
        if cache is not None and cache.enabled:
            records = self._attach_cache(records, cache)
        elif on_bad_image == "skip":
            records = self._drop_undecodable(records)
        self.records = records
        self.skipped = total - len(records) + self.bad_records.count
        self.bad_images.report(f"{name}: {len(records)} samples")

    # ------------------------------------------------------------------ loading checks

    def _drop_missing(self, records: list[Record]) -> list[Record]:
        """A cheap stat of every file, so a missing one fails (or is counted) now."""
        missing = sorted(p for p in {r.image for r in records} if not os.path.isfile(p))
        if missing and self.on_bad_image == "error":
            raise BadImageError(
                missing[0], f"file not found ({len(missing)} missing in {self.name})"
            )
        for path in missing:
            self.bad_images.add(BadImageError(path, "file not found"))
        gone = set(missing)
        return [r for r in records if r.image not in gone] if gone else records

    def _attach_cache(self, records: list[Record], cfg: CacheConfig) -> list[Record]:
        paths = sorted({r.image for r in records})  # order-free, so datasets can share it
        self.cache = open_or_build(
            self.name, paths, self.transform, cfg.dir, self.on_bad_image, cfg.workers, cfg.progress
        )
        for path, reason in self.cache.bad:
            self.bad_images.add(BadImageError(path, reason))
        kept = [r for r in records if r.image in self.cache]
        self._rows = np.array([self.cache.row(r.image) for r in kept], dtype=np.int64)
        return kept

    def _drop_undecodable(self, records: list[Record]) -> list[Record]:
        bad: set[str] = set()
        for path in tqdm(
            list(dict.fromkeys(r.image for r in records)),
            desc="checking images",
            unit="img",
            disable=len(records) < 1000,
        ):
            try:
                load_image(path)
            except BadImageError as err:
                bad.add(path)
                self.bad_images.add(err)
        return [r for r in records if r.image not in bad]

    # ------------------------------------------------------------------ samples

    @property
    def num_labels(self) -> int:
        """The label count the class declares (``info.num_labels``).

        Caption data has none, and then no such attribute (AttributeError, so ``hasattr``
        is False), as callers that size a task head from the data expect.
        """
        n = getattr(getattr(self, "info", None), "num_labels", None)
        if n is None:
            raise AttributeError(f"{type(self).__name__} has no labels (info.num_labels)")
        return n

    @property
    def label_names(self) -> list[str] | None:
        """What each label means, in label order (``info.label_names``; a reader whose
        labels come from the data, as VQA's answers, overrides this). None: unnamed."""
        names = getattr(getattr(self, "info", None), "label_names", None)
        return list(names) if names is not None else None

    def label_tensor(self, target: Any) -> torch.Tensor | None:
        """The label of one record; readers with compact targets override this."""
        return None if target is None else torch.as_tensor(target)

    def __len__(self) -> int:
        return len(self.records)

    def _sample(self, record: Record, image: torch.Tensor) -> Sample:
        return Sample(
            image=image,
            text=record.text,
            label=self.label_tensor(record.target),
            id=record.id,
            image_id=record.image_id,
        )

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        if self.cache is not None:
            image = self.transform.finish(self.cache.read(int(self._rows[index])))
        else:
            image = self.transform(load_image(record.image))
        return self._sample(record, image)

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """A whole batch at once: one memmap gather and one normalisation (DataLoader uses it)."""
        if self.cache is None:
            return [self[i] for i in indices]
        images = self.transform.finish_batch(self.cache.read(self._rows[list(indices)]))
        return [self._sample(self.records[i], img) for i, img in zip(indices, images, strict=True)]

    def loading_report(self) -> dict[str, Any]:
        """What a run stores: sample count, skipped samples and the bad files with reasons."""
        return {
            "dataset": self.name,
            "samples": len(self),
            "skipped": self.skipped,
            "bad_images": [{"path": p, "reason": r} for p, r in self.bad_images.entries],
            "bad_records": list(self.bad_records.entries),
        }


def dataset_label_names(dataset: Dataset) -> list[str] | None:
    """The label names of ``dataset`` (also through ``Subset`` s, as a held-out split)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "label_names", None)


class SplitDataset(ImageTextDataset):
    """A published dataset under ``root`` with named splits.

    Subclasses declare themselves (``info``: name, splits, labels, task) and say how to
    read a split's records (``read_records(root, split)``, or ``read_records(root, split,
    bad)`` for a reader that passes records it cannot use to ``bad``, a
    :class:`BadRecords`); loading, caching, bad-image and bad-record handling and building
    from a config are shared.
    """

    @staticmethod
    def read_records(root: str | Path, split: str) -> list[Record]:
        raise NotImplementedError

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        bad = BadRecords(on_bad_record)
        records = _call_reader(self.read_records, root, split, bad)
        super().__init__(f"{self.info.name}-{split}", records, transform, on_bad_image, cache,
                         limit, bad)  # fmt: skip

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> SplitDataset:
        return cls(cfg.root, split, transform, **cfg.reader_options())  # type: ignore[arg-type]


def _call_reader(
    read: Callable[..., list[Record]], root: str | Path, split: str, bad: BadRecords
) -> list[Record]:
    """``read(root, split, bad)``, or ``read(root, split)`` for a reader that never finds a
    bad record (the two-argument form of the extension recipe stays valid)."""
    if "bad" in inspect.signature(read).parameters:
        return read(root, split, bad)
    return read(root, split)

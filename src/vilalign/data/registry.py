"""One entry point, ``build_dataset(cfg, split, transform)``, for every registered dataset.

A dataset is one class that declares itself and says how to build itself from a config::

    @register_dataset
    class MyDataset(SplitDataset):
        info = DatasetInfo(name="my_dataset", splits=("train", "test"), num_labels=5,
                           task=TaskInfo(loss="multiclass", monitor="accuracy"))
        read_records = staticmethod(my_records)   # (root, split) -> list[Record]

``info`` is the only place its name, splits, label count and task are written: the data
config accepts the name, :func:`build_dataset` checks the split, and fine-tuning reads the
task (``vilalign.train.tasks``) from here. A dataset shipped with vilalign is imported at
the bottom of this module (one line); a dataset of your own is registered when its module
is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from torch.utils.data import Dataset

from vilalign.config import ConfigError
from vilalign.data.config import DataConfig
from vilalign.data.transforms import ImageTransform, build_transform
from vilalign.data.types import DatasetInfo

logger = logging.getLogger(__name__)


class RegisteredDataset(Protocol):
    """What :func:`register_dataset` needs of a dataset class."""

    info: ClassVar[DatasetInfo]

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
        """The dataset for ``split``, read as ``cfg`` says (root, cache, limit, options)."""
        ...


D = TypeVar("D", bound=type)
_DATASETS: dict[str, type[RegisteredDataset]] = {}


def register_dataset(cls: D) -> D:
    """Class decorator: make the dataset ``cls.info.name`` known to :func:`build_dataset`,
    the data config and the fine-tuning tasks. A name registered twice is an error."""
    info = getattr(cls, "info", None)
    if not isinstance(info, DatasetInfo) or not callable(getattr(cls, "from_config", None)):
        raise TypeError(f"{cls.__name__}: a dataset class needs `info` and `from_config`")
    known = _DATASETS.get(info.name)
    if known is not None and known is not cls:
        raise ValueError(
            f"dataset {info.name!r} registered twice: {known.__qualname__} and {cls.__qualname__}"
        )
    _DATASETS[info.name] = cls  # type: ignore[assignment]
    return cls


def dataset_names() -> list[str]:
    """Every registered dataset, sorted."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The declaration of dataset ``name``; an unknown name is an error naming the known."""
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r} (allowed: {', '.join(dataset_names())})")
    return _DATASETS[name].info


class _InfoView(Mapping[str, Any]):
    """A read-only ``{name: value}`` view of the registry, up to date after every
    registration (``SPLITS`` here, ``TASKS`` in vilalign.train.tasks)."""

    def __init__(self, value: Callable[[DatasetInfo], Any]) -> None:
        self._value = value

    def _items(self) -> dict[str, Any]:
        items = {n: self._value(_DATASETS[n].info) for n in dataset_names()}
        return {n: v for n, v in items.items() if v is not None}

    def __getitem__(self, name: str) -> Any:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


def info_view(value: Callable[[DatasetInfo], Any]) -> Mapping[str, Any]:
    """``{name: value(info)}`` over the registered datasets whose value is not None."""
    return _InfoView(value)


# split names per dataset, as the community uses them; the first is the training split
SPLITS: Mapping[str, tuple[str, ...]] = info_view(lambda info: info.splits)


def is_train_split(name: str, split: str) -> bool:
    """Whether ``split`` is the dataset's training split (the one that augments)."""
    return split == dataset_info(name).train_split


def build_image_transform(
    data_config: Mapping[str, Any], cfg: DataConfig, split: str
) -> ImageTransform:
    """The transform for ``split``: augmentation (per ``cfg.augment``) on training only."""
    return build_transform(data_config, cfg.augment, train=is_train_split(cfg.name, split))


def build_dataset(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    """The dataset ``cfg.name`` for ``split`` (a split or one of its aliases, passed on as
    given: the reader picks the file); unknown splits raise ConfigError naming them."""
    info = dataset_info(cfg.name)
    if split not in info.splits and split not in info.aliases:
        aliases = "".join(f", {a} (= {s})" for a, s in info.split_aliases)
        raise ConfigError(
            f"split: {split!r} is not a split of {info.name} "
            f"(allowed: {', '.join(info.splits)}{aliases})"
        )
    return _DATASETS[cfg.name].from_config(cfg, split, transform)


# The datasets shipped with vilalign: importing a module registers its datasets. (At the
# bottom: each module imports register_dataset from here.)
from vilalign.data import (  # noqa: E402, F401
    captions,
    easyvqa,
    food101,
    hateful_memes,
    karpathy,
    mmimdb,
    vqa,
)

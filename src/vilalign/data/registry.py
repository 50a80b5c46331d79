"""One entry point: ``build_dataset(cfg, split, transform)`` for every supported dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

from vilalign.config import ConfigError
from vilalign.data.config import DataConfig
from vilalign.data.transforms import ImageTransform, build_transform

logger = logging.getLogger(__name__)

Builder = Callable[[DataConfig, str, ImageTransform], Dataset]
_BUILDERS: dict[str, Builder] = {}
# split names per dataset, as the community uses them; the first is the training split
SPLITS: dict[str, tuple[str, ...]] = {}


def register_dataset(name: str, splits: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Decorator: make ``build_dataset`` know ``name`` with these split names."""

    def add(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        SPLITS[name] = splits
        return builder

    return add


def is_train_split(name: str, split: str) -> bool:
    """Whether ``split`` is the dataset's training split (the one that augments)."""
    return split == SPLITS[name][0]


def build_image_transform(
    data_config: Mapping[str, Any], cfg: DataConfig, split: str
) -> ImageTransform:
    """The transform for ``split``: augmentation (per ``cfg.augment``) on training only."""
    return build_transform(data_config, cfg.augment, train=is_train_split(cfg.name, split))


def build_dataset(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    """The dataset ``cfg.name`` for ``split``; unknown splits raise ConfigError naming them."""
    if cfg.name not in _BUILDERS:
        raise ConfigError(f"name: unknown dataset {cfg.name!r} (allowed: {sorted(_BUILDERS)})")
    if split not in SPLITS[cfg.name]:
        allowed = ", ".join(SPLITS[cfg.name])
        raise ConfigError(f"split: {split!r} is not a split of {cfg.name} (allowed: {allowed})")
    return _BUILDERS[cfg.name](cfg, split, transform)


def _common(cfg: DataConfig) -> dict[str, Any]:
    return {"on_bad_image": cfg.on_bad_image, "cache": cfg.cache, "limit": cfg.limit}


@register_dataset("easyvqa", ("train", "test"))
def _easyvqa(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.easyvqa import EasyVQA

    return EasyVQA(split, transform, **_common(cfg))


@register_dataset("easyvqa_captions", ("train", "test"))
def _easyvqa_captions(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.easyvqa import EasyVQACaptions

    return EasyVQACaptions(
        split, transform, captions_per_image=cfg.captions_per_image, **_common(cfg)
    )


@register_dataset("hateful_memes", ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen"))
def _hateful_memes(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.hateful_memes import HatefulMemes

    return HatefulMemes(cfg.root, split, transform, **_common(cfg))


@register_dataset("mmimdb", ("train", "dev", "test"))
def _mmimdb(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.mmimdb import MMIMDb

    return MMIMDb(cfg.root, split, transform, **_common(cfg))


@register_dataset("food101", ("train", "test"))
def _food101(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.food101 import Food101

    return Food101(cfg.root, split, transform, **_common(cfg))


@register_dataset("vqa", ("train", "val", "test-dev", "test"))
def _vqa(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.vqa import VQAv2

    return VQAv2(
        cfg.root,
        split,
        transform,
        answer_vocab=cfg.vqa_answer_vocab,
        vocab_size=cfg.vqa_answer_vocab_size,
        **_common(cfg),
    )


@register_dataset("captions_folder", ("train",))
def _captions_folder(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.captions import CaptionFolder

    return CaptionFolder(cfg.root, transform, **_common(cfg))


@register_dataset("captions_shards", ("train",))
def _captions_shards(cfg: DataConfig, split: str, transform: ImageTransform) -> Dataset:
    from vilalign.data.captions import CaptionShards

    # streaming: no cache (img2dataset already resized the images), no limit
    return CaptionShards(
        cfg.root,
        transform,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        on_bad_image=cfg.on_bad_image,
        epoch_length=cfg.epoch_length,
    )


from vilalign.data import karpathy as _karpathy  # noqa: E402, F401  (registers its builders)

"""vilalign.data: datasets in their real formats, preprocessing, image cache, collation.

Typical use (``model.image_data_config`` is the image encoder's timm data config)::

    cfg = DataConfig(name="easyvqa")                      # cache on, in ~/.cache/vilalign
    transform = build_image_transform(model.image_data_config, cfg, "train")
    train = build_dataset(cfg, "train", transform)        # built once, then memory-mapped
    loader = DataLoader(train, batch_size=64, shuffle=True,
                        collate_fn=Collator(tokenizer, max_length=24))
    run.log(train.loading_report())                       # skipped bad images, with reasons

Pretraining captions from easy-VQA: ``DataConfig(name="easyvqa_captions")``; from
Conceptual Captions: :func:`download_conceptual_captions`, then
``DataConfig(name="captions_shards", root="cc/{00000..00331}.tar")``.

A new dataset is one class that declares itself (``info = DatasetInfo(...)``: name,
splits, label count, task) and builds itself (``from_config``), decorated with
:func:`register_dataset`; see :mod:`vilalign.data.registry`. Every sample names the
image it shows (``Sample.image_id``), which negatives, retrieval and caption averaging use.
"""

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.cache import (
    CacheEntry,
    ImageCache,
    default_cache_dir,
    list_caches,
    open_or_build,
    remove_cache,
)
from vilalign.data.captions import (
    CaptionFolder,
    CaptionShards,
    DownloadReport,
    download_conceptual_captions,
    read_download_report,
)
from vilalign.data.collate import Collator, stack_images
from vilalign.data.config import AugmentConfig, CacheConfig, DataConfig
from vilalign.data.easyvqa import EasyVQA, EasyVQACaptions, caption_key
from vilalign.data.food101 import Food101
from vilalign.data.hateful_memes import HatefulMemes
from vilalign.data.images import (
    BadImageError,
    BadImageLog,
    DataFormatError,
    decode_image,
    load_image,
)
from vilalign.data.mmimdb import MMIMDb
from vilalign.data.registry import (
    SPLITS,
    build_dataset,
    build_image_transform,
    dataset_info,
    dataset_names,
    is_train_split,
    register_dataset,
)
from vilalign.data.transforms import ImageTransform, build_transform
from vilalign.data.types import Batch, DatasetInfo, Sample, TaskInfo
from vilalign.data.vqa import (
    VQAv2,
    load_answer_vocab,
    normalize_answer,
    save_answer_vocab,
    soft_score,
)

__all__ = [
    "SPLITS",
    "AugmentConfig",
    "BadImageError",
    "BadImageLog",
    "Batch",
    "CacheConfig",
    "CacheEntry",
    "CaptionFolder",
    "CaptionShards",
    "Collator",
    "DataConfig",
    "DataFormatError",
    "DatasetInfo",
    "DownloadReport",
    "EasyVQA",
    "EasyVQACaptions",
    "Food101",
    "HatefulMemes",
    "ImageCache",
    "ImageTextDataset",
    "ImageTransform",
    "MMIMDb",
    "Record",
    "Sample",
    "TaskInfo",
    "VQAv2",
    "build_dataset",
    "build_image_transform",
    "build_transform",
    "caption_key",
    "dataset_info",
    "dataset_names",
    "decode_image",
    "default_cache_dir",
    "download_conceptual_captions",
    "is_train_split",
    "list_caches",
    "load_answer_vocab",
    "load_image",
    "normalize_answer",
    "open_or_build",
    "read_download_report",
    "register_dataset",
    "remove_cache",
    "save_answer_vocab",
    "soft_score",
    "stack_images",
]

"""vilalign.data: datasets in their real formats, preprocessing, image cache, collation.

Typical use::

    cfg = DataConfig(name="easyvqa", cache={"dir": "cache"})
    transform = build_image_transform(model.image_data_config, cfg, "train")
    train = build_dataset(cfg, "train", transform)
    loader = DataLoader(train, batch_size=64, shuffle=True,
                        collate_fn=Collator(tokenizer, max_length=24))
"""

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.cache import ImageCache, default_cache_dir, open_or_build
from vilalign.data.collate import Collator
from vilalign.data.config import AugmentConfig, CacheConfig, DataConfig
from vilalign.data.images import (
    BadImageError,
    BadImageLog,
    DataFormatError,
    decode_image,
    load_image,
)
from vilalign.data.registry import (
    SPLITS,
    build_dataset,
    build_image_transform,
    is_train_split,
    register_dataset,
)
from vilalign.data.transforms import ImageTransform, build_transform
from vilalign.data.types import Batch, Sample

__all__ = [
    "SPLITS",
    "AugmentConfig",
    "BadImageError",
    "BadImageLog",
    "Batch",
    "CacheConfig",
    "Collator",
    "DataConfig",
    "DataFormatError",
    "ImageCache",
    "ImageTextDataset",
    "ImageTransform",
    "Record",
    "Sample",
    "build_dataset",
    "build_image_transform",
    "build_transform",
    "decode_image",
    "default_cache_dir",
    "is_train_split",
    "load_image",
    "open_or_build",
    "register_dataset",
]

"""Validated data configuration: which dataset, where, how images are loaded and cached."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from vilalign.config import StrictModel


class CacheConfig(StrictModel):
    """The preprocessed-image cache (decode + resize once, then memory-mapped uint8)."""

    enabled: bool = Field(True, description="Read images through the memory-mapped cache.")
    dir: str | None = Field(
        None,
        description="Folder for cache files; default $VILALIGN_CACHE, else "
        "$XDG_CACHE_HOME/vilalign, else ~/.cache/vilalign.",
    )
    workers: int = Field(0, ge=0, description="Processes that decode while building; 0: inline.")
    progress: bool = Field(True, description="Show a progress bar while building.")


class AugmentConfig(StrictModel):
    """Training augmentation (albumentations); never applied to evaluation splits.

    The defaults are deliberately mild: a horizontal flip swaps 'left' and 'right' in VQA
    questions and colour jitter changes the answer of 'what color is ...' questions, so
    both are off unless asked for.
    """

    enabled: bool = True
    crop_scale: tuple[float, float] | None = Field(
        (0.8, 1.0), description="RandomResizedCrop area range; null: no random crop."
    )
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip.")
    color_jitter: float = Field(
        0.0, ge=0, description="Brightness/contrast/saturation strength; 0: off."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> AugmentConfig:
        lo, hi = self.crop_scale or (0.5, 1.0)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale: need 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio: need 0 < low <= high, got {self.crop_ratio}")
        return self


class DataConfig(StrictModel):
    """One dataset: its name, files, and how its images are read."""

    name: str = Field(
        "easyvqa", description="A registered dataset (vilalign.data.registry.dataset_names())."
    )
    root: str | None = Field(
        None,
        description="Dataset folder (for captions_shards: a shard pattern such as "
        "'cc/{00000..00099}.tar'). Not needed for easyvqa / easyvqa_captions.",
    )
    on_bad_image: Literal["error", "skip"] = Field(
        "error",
        description="'error': a missing/empty/truncated/non-image file fails naming it; "
        "'skip': the sample is dropped and counted.",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="A record the reader cannot use (a broken line, a label outside the "
        "task, an MM-IMDb movie with none of the 23 genres, a VQA question with no answer in "
        "the vocabulary, a text that is not UTF-8): 'error' names the file and line; 'skip' "
        "drops the record and counts it in the loading report.",
    )
    limit: int | None = Field(None, gt=0, description="Keep only the first N samples.")
    cache: CacheConfig = CacheConfig()
    augment: AugmentConfig = AugmentConfig()
    vqa_answer_vocab_size: int = Field(3129, gt=0, description="Top-k answers (VQA v2).")
    vqa_answer_vocab: str | None = Field(
        None,
        description="JSON answer list saved by a previous run; default: built from the "
        "train annotations under root.",
    )
    captions_per_image: int = Field(
        1, ge=1, description="easyvqa_captions: caption sentences (samples) per image."
    )
    caption: int | None = Field(
        None,
        ge=0,
        description="coco_karpathy / flickr30k_karpathy: only caption number i of each image "
        "(one sample per image); null: every caption is a sample (ids '<image>#<i>').",
    )
    shuffle_buffer: int = Field(1000, ge=0, description="captions_shards: samples in buffer.")
    epoch_length: int | None = Field(
        None, gt=0, description="captions_shards: samples per rank per epoch (equal DDP steps)."
    )
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        from vilalign.data.registry import dataset_info  # (the registry imports this module)

        dataset_info(name)  # an unknown name raises, naming the registered ones
        return name

    @model_validator(mode="after")
    def _check_root(self) -> DataConfig:
        from vilalign.data.registry import dataset_info, dataset_names

        info = dataset_info(self.name)
        if self.root is None and info.needs_root:
            raise ValueError(f"root: dataset {self.name!r} needs a root folder")
        if self.caption is not None and not info.several_captions:
            several = [n for n in dataset_names() if dataset_info(n).several_captions]
            raise ValueError(
                f"caption: only the Karpathy caption sets and others with several captions "
                f"per image ({', '.join(several)}) pick one; {self.name!r} has one"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_default_record_policy(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out at its default, so run configs and experiment cells hash as before the
        # field existed (their folders are named by the hash).
        data = handler(self)
        if self.on_bad_record == "error":
            data.pop("on_bad_record", None)
        return data

    def reader_options(self) -> dict[str, Any]:
        """The keyword arguments every map-style reader takes (``ImageTextDataset``)."""
        return {
            "on_bad_image": self.on_bad_image,
            "on_bad_record": self.on_bad_record,
            "cache": self.cache,
            "limit": self.limit,
        }

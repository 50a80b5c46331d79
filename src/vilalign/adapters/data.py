"""Samples for a published model: vilalign's dataset readers, the model's own processor.

vilalign's readers normally hand out images already resized and normalised for its own
ViT. A published model must see what its own processor makes of the image, so for it the
readers run with :class:`RawImage` as their transform (the decoded RGB image at its own
size, as a 3×H×W uint8 tensor; no image cache, which stores one fixed size) and
:class:`ProcessorCollator` turns a list of samples into a :class:`Batch` with the
model's processor — resizing, cropping, normalising and tokenising as the model's
authors do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vilalign.data import DataConfig, build_dataset
from vilalign.data.types import Batch, Sample

if TYPE_CHECKING:
    from vilalign.adapters.base import Adapter
    from vilalign.analysis.pipeline import AlignmentSpec

#: Batch fields every processor output maps onto; anything else goes to ``Batch.extras``.
_TEXT_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


class RawImage:
    """Dataset transform for published models: the decoded image, 3×H×W uint8, its own size.

    (``Sample.image`` then holds raw pixels rather than normalised ones; only the
    processor collators below read it.)
    """

    def __call__(self, image: Image.Image) -> torch.Tensor:
        hwc = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))


class NoImage:
    """Dataset transform for region-feature models, whose image is a row of a feature file."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)


def stack_labels(samples: Sequence[Sample]) -> torch.Tensor | None:
    labels = [s.label for s in samples]
    return torch.stack(labels) if all(x is not None for x in labels) else None  # type: ignore[arg-type]


def kept_samples(samples: Sequence[Sample | None]) -> list[Sample]:
    """Drop the ``None`` entries a streaming reader leaves for skipped images."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise ValueError("collate: empty batch (every sample was skipped)")
    return kept


def to_batch(encoded: dict[str, Any], samples: Sequence[Sample]) -> Batch:
    """A processor's output as a :class:`Batch`: text fields by name (a missing mask means
    every token is real), pixels, and every other field (``pixel_mask``…) in ``extras``."""
    ids = encoded["input_ids"].long()
    mask = encoded.get("attention_mask")
    types = encoded.get("token_type_ids")
    pixels = encoded.get("pixel_values")
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids) if mask is None else mask.long(),
        token_type_ids=torch.zeros_like(ids) if types is None else types.long(),
        pixel_values=pixels if pixels is not None else torch.empty(len(ids), 0),
        labels=stack_labels(samples),
        ids=[s.id for s in samples],
        extras={k: v for k, v in encoded.items() if k not in (*_TEXT_FIELDS, "pixel_values")},
    )


class ProcessorCollator:
    """``list[Sample]`` (raw images) → :class:`Batch`, through the model's own processor.

    Texts are truncated to ``max_length`` tokens and padded to the longest in the batch
    (``padding="longest"``) or always to ``max_length`` (``"max_length"``: the token
    view, or a model trained on fixed-length texts such as SigLIP). ``text_kwargs`` go to
    the tokenizer as well (e.g. ``return_attention_mask=True``).
    """

    def __init__(
        self,
        processor: Any,
        max_length: int,
        padding: str = "longest",
        text_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.processor = processor
        self.max_length = max_length
        self.padding = padding
        self.text_kwargs = dict(text_kwargs or {})

    def __call__(self, samples: Sequence[Sample | None]) -> Batch:
        kept = kept_samples(samples)
        encoded = self.processor(
            images=[s.image for s in kept],
            text=[s.text for s in kept],
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            **self.text_kwargs,
        )
        return to_batch(dict(encoded), kept)


def adapter_dataset(adapter: Adapter, data: DataConfig, split: str) -> Dataset:
    """``split`` of ``data`` with the adapter's transform and no image cache (the cache
    stores images at one fixed size; a processor wants them as they are)."""
    no_cache = data.cache.model_copy(update={"enabled": False})
    return build_dataset(
        data.model_copy(update={"cache": no_cache}), split, adapter.image_transform()
    )  # type: ignore[arg-type]


def adapter_loader(adapter: Adapter, spec: AlignmentSpec) -> DataLoader:
    """An evaluation loader (fixed order) over the analysis split, for :func:`run_alignment`."""
    dataset = adapter_dataset(adapter, spec.data, spec.split)
    padding = "max_length" if "tokens" in spec.views else "longest"
    collate = adapter.collator(spec.max_length, padding)
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=False, collate_fn=collate)

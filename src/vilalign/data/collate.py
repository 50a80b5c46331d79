"""Collation: tokenise the texts with the text encoder's tokenizer and batch into ``Batch``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from vilalign.data.types import Batch, Sample


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, without the copy when the images already are the rows, in order,
    of one batch tensor (what a cached dataset's ``__getitems__`` returns)."""
    base = images[0]._base
    if (
        base is not None
        and base.dim() == 4
        and base.shape[0] == len(images)
        and base.is_contiguous()
        and all(
            img._base is base and img.data_ptr() == base[i].data_ptr()
            for i, img in enumerate(images)
        )
    ):
        return base
    return torch.stack(images)


class Collator:
    """``list[Sample]`` → :class:`Batch` (picklable, so DataLoader workers can run it).

    ``tokenizer`` is a ``transformers`` fast tokenizer (e.g. ``BertTokenizerFast``). Texts
    are truncated to ``max_length`` tokens ([CLS] and [SEP] included) and padded to the
    longest text in the batch (``padding="longest"``, cheaper) or always to ``max_length``
    (``"max_length"``, fixed shapes for ``torch.compile``). ``None`` entries (samples a
    streaming reader skipped) are dropped. Labels are stacked when every sample has one.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 32,
        padding: Literal["longest", "max_length"] = "longest",
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length: need room for [CLS] and [SEP], got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids as (B, T) long tensors."""
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {k: enc[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}

    def __call__(self, samples: Sequence[Sample | None]) -> Batch:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise ValueError("collate: empty batch (every sample was skipped)")
        labels = [s.label for s in kept]
        return Batch(
            **self.tokenize([s.text for s in kept]),
            pixel_values=stack_images([s.image for s in kept]),  # (B, C, H, W)
            labels=torch.stack(labels) if all(x is not None for x in labels) else None,
            ids=[s.id for s in kept],
        )

"""Collation: tokenise the texts with the text encoder's tokenizer and batch into ``Batch``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
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

    Token ids of up to ``text_cache_size`` distinct texts are remembered: VQA-style data
    repeats its questions (easy-VQA has 107 distinct ones), and a dictionary lookup is ten
    times cheaper than the tokenizer call. The output is identical either way.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 32,
        padding: Literal["longest", "max_length"] = "longest",
        text_cache_size: int = 100_000,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length: need room for [CLS] and [SEP], got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.text_cache_size = text_cache_size
        # the manual padding below is only valid for right padding with a pad token
        self._cacheable = tokenizer.padding_side == "right" and tokenizer.pad_token_id is not None
        self._cache: dict[str, tuple[list[int], list[int]]] = {}

    def _encode(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """(input ids, token type ids) per text, unpadded, from the cache or the tokenizer."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            enc = self.tokenizer(
                missing, truncation=True, max_length=self.max_length, return_token_type_ids=True
            )
            new = dict(
                zip(missing, zip(enc["input_ids"], enc["token_type_ids"], strict=True), strict=True)
            )
            room = self.text_cache_size - len(self._cache)
            self._cache.update(list(new.items())[: max(room, 0)])
        else:
            new = {}
        return [self._cache.get(t) or new[t] for t in texts]

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids as (B, T) long tensors."""
        if not self._cacheable:
            return self._tokenize_directly(texts)
        encoded = self._encode(list(texts))
        width = self.max_length if self.padding == "max_length" else max(len(i) for i, _ in encoded)
        ids = np.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=np.int64)
        types = np.zeros((len(encoded), width), dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, (tok, typ) in enumerate(encoded):
            ids[row, : len(tok)] = tok
            types[row, : len(typ)] = typ
            mask[row, : len(tok)] = 1
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
        }

    def _tokenize_directly(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
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
            image_ids=[s.image_id for s in kept],
        )

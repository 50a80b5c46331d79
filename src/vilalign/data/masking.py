"""Pretraining corruption: MLM token masking, MIM patch masks, alignment-prediction negatives.

These are applied by a pretraining collator (see ``vilalign.train.tasks``), never by a dataset,
so every caption dataset serves pretraining unchanged. Every function takes an explicit
``torch.Generator`` so a batch's corruption is a pure function of its seed: the same on
resume and in any data-loader worker.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace as dc_replace
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from vilalign.data.types import Batch, Sample

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    random_token_ids: torch.Tensor,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``probability`` of maskable tokens; 80 % [MASK], 10 % random, 10 % kept.

    ``maskable`` (B, T) bool is False on special tokens and padding. ``random_token_ids`` are
    the ids a replaced token is drawn from (the vocabulary without special tokens).
    Returns the corrupted ids and labels (the original id where chosen, -100 elsewhere).
    """
    # (B, T) draws: one for "chosen", one for which of the three corruptions.
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & maskable
    kind = torch.rand(input_ids.shape, generator=generator)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = chosen & (kind < 0.8)
    to_random = chosen & (kind >= 0.8) & (kind < 0.9)
    pick = torch.randint(len(random_token_ids), input_ids.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(to_random, random_token_ids[pick], out)
    return out, labels


def maskable_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int]
) -> torch.Tensor:
    """(B, T) bool: real tokens that are not special ([CLS], [SEP], [PAD], ...)."""
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    return attention_mask.bool() & ~special


def patch_mask(
    batch_size: int,
    grid: tuple[int, int],
    ratio: float,
    pattern: Literal["random", "block"] = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, H*W) bool patch masks with exactly ``round(ratio * H * W)`` patches masked per image.

    A fixed count per image keeps the MIM loss comparable across images. ``block`` masks
    rectangles (BEiT-style) so the model cannot fill a patch in from its neighbours alone.
    """
    h, w = grid
    count = max(1, round(ratio * h * w))
    if pattern == "random":
        # Rank of a uniform draw per patch: the `count` smallest are masked.
        ranks = torch.rand(batch_size, h * w, generator=generator).argsort(dim=1).argsort(dim=1)
        return ranks < count
    if pattern == "block":
        return torch.stack([_block_mask(h, w, count, generator) for _ in range(batch_size)])
    raise ValueError(f"pattern: unknown MIM mask pattern {pattern!r} (allowed: random, block)")


def _block_mask(h: int, w: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """One (H*W,) mask: random rectangles until ``count`` patches are covered, then trimmed."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    min_area = min(4, count)
    for _ in range(100 * h * w):  # bounded: a rectangle covering nothing new is possible
        if int(mask.sum()) >= count:
            break
        area = _uniform(min_area, max(min_area, count - int(mask.sum())), generator)
        aspect = math.exp(_uniform(math.log(0.3), math.log(1 / 0.3), generator))
        bh = min(h, max(1, round(math.sqrt(area * aspect))))
        bw = min(w, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(w - bw + 1, (1,), generator=generator))
        mask[top : top + bh, left : left + bw] = True
    flat = mask.flatten()
    # Trim the overshoot of the last rectangle at random so the count is exact.
    masked = flat.nonzero().squeeze(1)
    extra = len(masked) - count
    if extra > 0:
        drop = masked[torch.randperm(len(masked), generator=generator)[:extra]]
        flat[drop] = False
    return flat


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def alignment_negatives(
    image_keys: Sequence[str],
    captions: Sequence[str],
    negative_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Pick, for a share of the pairs, a caption from another image of the batch.

    Returns ``caption_source`` (for pair i, the index whose caption it gets) and the AP
    labels (B,) long, 1 = caption belongs to the image. A negative caption never comes from
    the same image and never has the same text (two images with the same caption would
    make a "negative" that is true). Where no such caption exists in the batch the pair
    stays positive.
    """
    n = len(captions)
    source = list(range(n))
    labels = torch.ones(n, dtype=torch.long)
    make_negative = torch.rand(n, generator=generator) < negative_ratio
    for i in make_negative.nonzero().flatten().tolist():
        candidates = [
            j for j in range(n) if image_keys[j] != image_keys[i] and captions[j] != captions[i]
        ]
        if candidates:
            j = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
            source[i] = j
            labels[i] = 0
    return source, labels


def batch_generator(seed: int, epoch: int, ids: Sequence[str]) -> torch.Generator:
    """A generator seeded from the run seed, the epoch and the batch's sample ids.

    The corruption of a batch is then the same whichever process collates it, and on
    resume, without sharing RNG state with data-loader workers.
    """
    digest = hashlib.sha256(f"{seed}:{epoch}:{'|'.join(ids)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class PretrainingCollator:
    """Wrap a collate function: AP negatives on the samples, then MLM and MIM masks on the batch.

    ``image_key`` names the image a sample shows (default: ``Sample.image_id``, set by the
    reader); a negative caption is never taken from a sample with the same key, so another
    caption of the same image is never drawn as a "negative". Set a rate to 0 / None to switch a
    corruption off. Call :meth:`set_epoch` before each epoch so every epoch draws new masks.
    """

    def __init__(
        self,
        collate: Callable[[list[Sample]], Batch],
        tokenizer: PreTrainedTokenizerBase,
        patch_grid: tuple[int, int],
        mlm_probability: float | None = 0.15,
        mim_ratio: float | None = 0.4,
        mim_pattern: Literal["random", "block"] = "random",
        ap_negative_ratio: float = 0.5,
        mlm_on_negatives: bool = False,
        seed: int = 0,
        image_key: Callable[[Sample], str] | None = None,
    ) -> None:
        self.collate = collate
        self.patch_grid = patch_grid
        self.mlm_probability = mlm_probability
        self.mim_ratio = mim_ratio
        self.mim_pattern = mim_pattern
        self.ap_negative_ratio = ap_negative_ratio
        self.mlm_on_negatives = mlm_on_negatives
        self.seed = seed
        self.epoch = 0
        self.image_key = image_key or _image_id
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        vocab = torch.arange(len(tokenizer))
        self.random_token_ids = vocab[~torch.isin(vocab, torch.tensor(self.special_ids))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, samples: list[Sample]) -> Batch:
        gen = batch_generator(self.seed, self.epoch, [s.id for s in samples])
        ap_labels = None
        if self.ap_negative_ratio > 0:
            samples, ap_labels = self._negatives(samples, gen)
        batch = self.collate(samples)
        batch.ap_labels = ap_labels
        if self.mlm_probability:
            self._mask_text(batch, gen)
        if self.mim_ratio:
            batch.mim_mask = patch_mask(
                len(batch), self.patch_grid, self.mim_ratio, self.mim_pattern, gen
            )
        return batch

    def _negatives(
        self, samples: list[Sample], gen: torch.Generator
    ) -> tuple[list[Sample], torch.Tensor]:
        keys = [self.image_key(s) for s in samples]
        texts = [s.text for s in samples]
        source, labels = alignment_negatives(keys, texts, self.ap_negative_ratio, gen)
        swapped = [dc_replace(s, text=texts[j]) for s, j in zip(samples, source, strict=True)]
        return swapped, labels

    def _mask_text(self, batch: Batch, gen: torch.Generator) -> None:
        maskable = maskable_tokens(batch.input_ids, batch.attention_mask, self.special_ids)
        if batch.ap_labels is not None and not self.mlm_on_negatives:
            maskable &= batch.ap_labels.bool()[:, None]
        batch.input_ids, batch.mlm_labels = mask_tokens(
            batch.input_ids,
            maskable,
            self.mask_token_id,
            self.random_token_ids,
            self.mlm_probability,
            gen,
        )


def _image_id(sample: Sample) -> str:
    return str(sample.image_id)

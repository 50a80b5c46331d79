"""MLM masking statistics, MIM patch masks, AP negatives, and the pretraining collator."""

from __future__ import annotations

import pytest
import torch

from vilalign.config import TextEncoderConfig
from vilalign.data.masking import (
    IGNORE_INDEX,
    PretrainingCollator,
    alignment_negatives,
    mask_tokens,
    maskable_tokens,
    patch_mask,
)
from vilalign.data.types import Batch, Sample
from vilalign.model import load_tokenizer

CLS, SEP, PAD, MASK = 101, 102, 0, 103
SPECIAL = [PAD, 100, CLS, SEP, MASK]


def _ids(batch: int = 4000, length: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sentences of random length: [CLS] words [SEP] [PAD]..."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=gen)
    lengths = torch.randint(5, length + 1, (batch,), generator=gen)
    pos = torch.arange(length)[None]
    attention = (pos < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(batch), lengths - 1] = SEP
    ids[attention == 0] = PAD
    return ids, attention


def test_mlm_statistics_on_a_large_sample():
    ids, attention = _ids()
    maskable = maskable_tokens(ids, attention, SPECIAL)
    random_ids = torch.arange(1000, 2000)  # disjoint from the sentences' ids: detectable
    out, labels = mask_tokens(
        ids, maskable, MASK, random_ids, 0.15, torch.Generator().manual_seed(1)
    )
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.01
    n = chosen.sum()
    as_mask = (out[chosen] == MASK).sum() / n
    as_random = ((out[chosen] >= 1000) & (out[chosen] < 2000)).sum() / n
    kept = (out[chosen] == ids[chosen]).sum() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(as_random - 0.1) < 0.02 and abs(kept - 0.1) < 0.02
    assert torch.equal(labels[chosen], ids[chosen])
    # Special tokens and padding are never chosen, never changed.
    assert not chosen[~maskable].any()
    assert torch.equal(out[~maskable], ids[~maskable])
    assert torch.equal(out[~chosen], ids[~chosen])


def test_patch_masks_have_the_exact_count_per_image():
    gen = torch.Generator().manual_seed(0)
    for pattern in ("random", "block"):
        mask = patch_mask(16, (8, 8), 0.4, pattern, gen)
        assert mask.shape == (16, 64)
        assert (mask.sum(1) == round(0.4 * 64)).all()
    with pytest.raises(ValueError, match="pattern"):
        patch_mask(2, (8, 8), 0.4, "stripes")


def test_block_masks_are_contiguous_more_than_random_ones():
    gen = torch.Generator().manual_seed(0)

    def neighbours(mask: torch.Tensor) -> float:
        grid = mask.view(-1, 8, 8).float()
        return float((grid[:, :, 1:] * grid[:, :, :-1]).sum() + (grid[:, 1:] * grid[:, :-1]).sum())

    assert neighbours(patch_mask(64, (8, 8), 0.4, "block", gen)) > 1.5 * neighbours(
        patch_mask(64, (8, 8), 0.4, "random", gen)
    )


def test_ap_negatives_never_use_their_own_image_and_are_balanced():
    gen = torch.Generator().manual_seed(0)
    negatives = total = 0
    for _ in range(200):
        # Two captions per image, and some captions shared by different images.
        keys = [f"img{i // 2}" for i in range(32)]
        texts = [f"caption {i % 20}" for i in range(32)]
        source, labels = alignment_negatives(keys, texts, 0.5, gen)
        for i, (j, label) in enumerate(zip(source, labels.tolist(), strict=True)):
            if label == 0:
                assert keys[j] != keys[i] and texts[j] != texts[i]
            else:
                assert j == i
        negatives += int((labels == 0).sum())
        total += len(labels)
    assert abs(negatives / total - 0.5) < 0.03


def test_ap_without_any_other_caption_stays_positive():
    source, labels = alignment_negatives(["a", "a"], ["x", "y"], 1.0)
    assert source == [0, 1] and labels.tolist() == [1, 1]


@pytest.fixture(scope="module")
def collator():
    tokenizer = load_tokenizer(TextEncoderConfig())

    def collate(samples: list[Sample]) -> Batch:
        enc = tokenizer([s.text for s in samples], padding=True, return_tensors="pt")
        return Batch(
            enc["input_ids"],
            enc["attention_mask"],
            enc["token_type_ids"],
            torch.stack([s.image for s in samples]),
            ids=[s.id for s in samples],
        )

    return PretrainingCollator(collate, tokenizer, (4, 4), seed=3)


def _samples(n: int = 16) -> list[Sample]:
    words = ["red", "green", "blue", "circle", "square", "triangle", "big", "small"]
    return [
        Sample(
            torch.full((3, 8, 8), float(i)),
            f"a {words[i % 8]} {words[(i + 3) % 8]} shape",
            None,
            f"s{i}",
        )
        for i in range(n)
    ]


def test_collator_adds_every_field_and_is_a_function_of_seed_epoch_and_ids(collator):
    batch = collator(_samples())
    assert batch.mlm_labels.shape == batch.input_ids.shape
    assert batch.mim_mask.shape == (16, 16) and batch.ap_labels.shape == (16,)
    # Negative pairs carry no MLM labels (their caption does not describe the image).
    assert (batch.mlm_labels[batch.ap_labels == 0] == IGNORE_INDEX).all()
    again = collator(_samples())
    assert torch.equal(batch.input_ids, again.input_ids)
    assert torch.equal(batch.mim_mask, again.mim_mask)
    collator.set_epoch(1)
    later = collator(_samples())
    collator.set_epoch(0)
    assert not torch.equal(batch.mim_mask, later.mim_mask)

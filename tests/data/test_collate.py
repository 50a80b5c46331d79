"""Collation: tokenisation with padding/truncation into a Batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vilalign.data import Batch, Collator, Sample


def samples(texts, labels=True):
    return [
        Sample(
            image=torch.full((3, 8, 8), float(i)),
            text=t,
            label=torch.tensor(i) if labels else None,
            id=f"s{i}",
        )
        for i, t in enumerate(texts)
    ]


def test_padding_truncation_and_fields(tokenizer):
    texts = ["a red circle", "one two three four five six seven eight nine ten eleven"]
    batch = Collator(tokenizer, max_length=8)(samples(texts))
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.input_ids.shape == (2, 8)  # the long text is truncated to max_length
    assert batch.input_ids[0, 0] == tokenizer.cls_token_id
    assert batch.input_ids[1, -1] == tokenizer.sep_token_id
    assert batch.attention_mask[0].tolist() == [1] * 5 + [0] * 3  # [CLS] a red circle [SEP]
    assert batch.token_type_ids.abs().sum() == 0
    assert torch.equal(batch.labels, torch.tensor([0, 1])) and batch.ids == ["s0", "s1"]
    assert batch.pixel_values[1].mean() == 1.0


def test_fixed_padding_missing_labels_and_skipped(tokenizer):
    batch = Collator(tokenizer, max_length=10, padding="max_length")(
        [None, *samples(["hi"], labels=False)]
    )
    assert batch.input_ids.shape == (1, 10) and batch.labels is None
    with pytest.raises(ValueError, match="empty batch"):
        Collator(tokenizer)([None])


def test_rows_of_one_batch_tensor_are_not_copied(tokenizer):
    images = torch.randn(3, 3, 4, 4)
    batch = Collator(tokenizer)(
        [Sample(image=img, text="x", label=None, id=str(i)) for i, img in enumerate(images)]
    )
    assert batch.pixel_values.data_ptr() == images.data_ptr()
    shuffled = [images[2], images[0], images[1]]  # not in row order: a real stack
    out = Collator(tokenizer)([Sample(image=img, text="x", label=None, id="s") for img in shuffled])
    assert out.pixel_values.data_ptr() != images.data_ptr()
    assert torch.equal(out.pixel_values, torch.stack(shuffled))


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_text_cache_gives_the_tokenizer_output(tokenizer, padding):
    texts = [
        "what color is the shape?",
        "Is there a RED circle?",
        "",
        "a b " * 20,
        "what color is the shape?",
        "naïve café déjà vu",
    ]
    collator = Collator(tokenizer, max_length=12, padding=padding, text_cache_size=3)
    for _ in range(2):  # cold, then (partly) cached
        got = collator.tokenize(texts)
        want = tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=12,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        for key, value in got.items():
            assert value.dtype == torch.long and torch.equal(value, want[key]), key
    assert len(collator._cache) == 3  # bounded


def test_the_batch_names_the_image_of_every_row(tokenizer):
    """Sample.image_id, set by the reader, travels into Batch.image_ids (a sample that
    names none shows its own image: its id stands for it)."""
    two = [replace(s, image_id="img7") for s in samples(["a", "b"])]
    batch = Collator(tokenizer)([*two, *samples(["c"], labels=False)])
    assert batch.ids == ["s0", "s1", "s0"] and batch.image_ids == ["img7", "img7", "s0"]
    moved = batch.to("cpu")
    assert moved.image_ids == batch.image_ids

"""easy-VQA from the installed package: every question, answers indexed by its data file."""

from __future__ import annotations

from pathlib import Path

import easy_vqa
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vilalign.data import Collator, DataConfig, build_dataset, build_image_transform
from vilalign.data.easyvqa import answers, caption_for, caption_key, image_facts


@pytest.fixture(scope="module")
def cached(data_config, tmp_path_factory):
    cfg = DataConfig(
        name="easyvqa", cache={"dir": str(tmp_path_factory.mktemp("c")), "progress": False}
    )
    transform = build_image_transform(data_config, cfg, "test")
    # train read from the files (no 4,000-image cache build here); test through the cache
    plain = DataConfig(**{**cfg.model_dump(), "cache": {"enabled": False}})
    return cfg, {
        "train": build_dataset(plain, "train", transform),
        "test": build_dataset(cfg, "test", transform),
    }


def test_all_questions_and_answer_order(cached):
    _, ds = cached
    assert (len(ds["train"]), len(ds["test"])) == (38575, 9673)
    file = Path(easy_vqa.__file__).parent / "data" / "answers.txt"
    assert answers() == [line.strip() for line in file.read_text().splitlines() if line.strip()]
    questions, words, _ = easy_vqa.get_test_questions()
    for i in (0, 1, 500, 9672):
        sample = ds["test"][i]
        assert sample.text == questions[i] and answers()[int(sample.label)] == words[i]
        assert sample.id == f"test-{i}"
    questions, words, _ = easy_vqa.get_train_questions()
    sample = ds["train"][38574]
    assert (sample.id, sample.text) == ("train-38574", questions[38574])
    assert answers()[int(sample.label)] == words[38574]


def test_cached_sample_equals_decoded(cached, data_config):
    cfg, ds = cached
    plain_cfg = DataConfig(**{**cfg.model_dump(), "cache": {"enabled": False}, "limit": 50})
    plain = build_dataset(plain_cfg, "test", build_image_transform(data_config, cfg, "test"))
    for i in (0, 7, 49):
        a, b = ds["test"][i], plain[i]
        assert a.id == b.id and a.text == b.text and torch.equal(a.label, b.label)
        assert torch.allclose(a.image, b.image, atol=1e-6)


def test_loader_batches(cached, tokenizer):
    _, ds = cached
    loader = DataLoader(ds["test"], batch_size=16, collate_fn=Collator(tokenizer, max_length=12))
    batch = next(iter(loader))
    assert batch.pixel_values.shape[0] == 16 and batch.input_ids.shape[1] <= 12
    assert batch.labels.dtype == torch.long and batch.ids[0] == "test-0"
    # the batched (__getitems__) path equals the one-by-one path
    assert torch.equal(batch.pixel_values[3], ds["test"][3].image)


def test_captions_from_question_answer_pairs(cached, data_config):
    cfg, ds = cached
    caps_cfg = DataConfig(
        **{**cfg.model_dump(), "name": "easyvqa_captions", "captions_per_image": 2}
    )
    caps = build_dataset(caps_cfg, "test", build_image_transform(data_config, caps_cfg, "test"))
    assert len(caps) == 2000 and caps[0].label is None
    # the caption states the shape and colour the image's answers establish
    q, a, ids = easy_vqa.get_test_questions()
    pairs = [(x, y) for x, y, i in zip(q, a, ids, strict=True) if i == 0]
    facts = image_facts(pairs)
    assert caps[0].text == caption_for(facts, 0) and caps[0].id == "test-img0-0"
    # both captions of image 0 show it, as do its questions
    assert caps[0].image_id == caps[1].image_id == "test-img0" != caps[2].image_id
    about_0 = [ds["test"][n].image_id for n, i in enumerate(ids) if i == 0]
    assert about_0 and set(about_0) == {"test-img0"}
    assert facts["shape"] in caps[0].text and facts["color"] in caps[0].text
    # two phrasings of the same content share a key, so neither is the other's negative
    key = " ".join(sorted([facts["color"], facts["shape"]]))
    assert caption_key(caps[0]) == caption_key(caps[1]) == key
    assert caps[0].text != caps[1].text


def test_image_facts_reads_negations():
    pairs = [
        ("is there not a red shape?", "no"),
        ("does the image contain a circle?", "yes"),
        ("is there a blue shape?", "no"),
    ]
    assert image_facts(pairs) == {"color": "red", "shape": "circle", "absent": "blue"}
    assert caption_for(image_facts(pairs), 0) == "a red circle."
    unsure = image_facts([("is there a triangle?", "no"), ("is there not a teal shape?", "yes")])
    assert caption_for(unsure, 0) == "a shape that is not teal and not a triangle."


NAMED_RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}


def shape_colour(image, data_config) -> str:
    """The named colour most foreground (non-near-white) pixels are closest to."""
    mean = np.array(data_config["mean"]).reshape(3, 1, 1)
    std = np.array(data_config["std"]).reshape(3, 1, 1)
    px = ((image.numpy() * std + mean) * 255).reshape(3, -1).T  # (H*W, 3)
    fg = px[np.abs(px - 245).max(axis=1) > 60]
    table = np.array(list(NAMED_RGB.values()), dtype=float)
    nearest = ((fg[:, None, :] - table[None]) ** 2).sum(-1).argmin(axis=1)
    return list(NAMED_RGB)[int(np.bincount(nearest, minlength=len(NAMED_RGB)).argmax())]


def test_images_show_what_their_questions_answer(cached, data_config):
    """The shape's colour in each sample's image is the answer to its colour question."""
    _, ds = cached
    test = ds["test"]
    colour_qs = [
        i
        for i, r in enumerate(test.records)
        if r.text.startswith(("what color", "what is the color"))
    ][:200]
    batch = test.__getitems__(colour_qs)
    seen = [shape_colour(s.image, data_config) for s in batch]
    truth = [test.answers[int(s.label)] for s in batch]
    agree = sum(a == b for a, b in zip(seen, truth, strict=True)) / len(batch)
    shifted = sum(a == b for a, b in zip(seen, truth[1:] + truth[:1], strict=True)) / len(batch)
    assert agree > 0.95 and shifted < 0.5  # a pairing off by one would show

"""easy-VQA from the installed package: every question, answers indexed by its data file."""

from __future__ import annotations

from pathlib import Path

import easy_vqa
import pytest
import torch
from torch.utils.data import DataLoader

from vilalign.data import Collator, DataConfig, build_dataset, build_image_transform
from vilalign.data.easyvqa import answers, caption_for, image_facts


@pytest.fixture(scope="module")
def cached(data_config, tmp_path_factory):
    cfg = DataConfig(name="easyvqa", cache={"dir": str(tmp_path_factory.mktemp("c")),
                                            "progress": False})
    transform = build_image_transform(data_config, cfg, "test")
    return cfg, {s: build_dataset(cfg, s, transform) for s in ("train", "test")}


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
    cfg, _ = cached
    caps_cfg = DataConfig(**{**cfg.model_dump(), "name": "easyvqa_captions",
                             "captions_per_image": 2})
    caps = build_dataset(caps_cfg, "test", build_image_transform(data_config, caps_cfg, "test"))
    assert len(caps) == 2000 and caps[0].label is None
    # the caption states the shape and colour the image's answers establish
    q, a, ids = easy_vqa.get_test_questions()
    pairs = [(x, y) for x, y, i in zip(q, a, ids, strict=True) if i == 0]
    facts = image_facts(pairs)
    assert caps[0].text == caption_for(facts, 0) and caps[0].id == "test-img0-0"
    assert facts["shape"] in caps[0].text and facts["color"] in caps[0].text


def test_image_facts_reads_negations():
    pairs = [("is there not a red shape?", "no"), ("does the image contain a circle?", "yes"),
             ("is there a blue shape?", "no")]
    assert image_facts(pairs) == {"color": "red", "shape": "circle"}
    assert caption_for({"color": "red", "shape": "circle"}, 0) == "a red circle."

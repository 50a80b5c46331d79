"""Every reader on fixture copies of its real format: counts, labels, texts, image↔text."""

from __future__ import annotations

import pytest
import torch

from vilalign.config import ConfigError
from vilalign.data import DataConfig, DataFormatError, build_dataset, build_image_transform
from vilalign.data.mmimdb import GENRES
from vilalign.data.vqa import normalize_answer, soft_score

from . import formats
from .helpers import assert_matches


def load(name, root, split, data_config, tmp_path, cache=True, **kw):
    cfg = DataConfig(
        name=name,
        root=str(root),
        cache={"enabled": cache, "progress": False, "dir": str(tmp_path / "cache")},
        **kw,
    )
    return build_dataset(cfg, split, build_image_transform(data_config, cfg, split))


@pytest.mark.parametrize("cache", [True, False])
def test_hateful_memes(tmp_path, data_config, cache):
    root = formats.hateful_memes(tmp_path / "hm")
    for split, count in formats.HM_SPLITS.items():
        ds = load("hateful_memes", root, split, data_config, tmp_path, cache)
        assert len(ds) == count
        for s in ds:
            assert s.text == f"meme text {s.id}" and s.image_id == f"img/{s.id}.png"
            assert_matches(s.image, f"hm{s.id}", data_config)
            assert (s.label is None) == split.startswith("test")
    train = load("hateful_memes", root, "train", data_config, tmp_path, cache)
    assert [int(s.label) for s in train] == [1, 0, 1, 0]


def test_mmimdb(tmp_path, data_config):
    root = formats.mmimdb(tmp_path / "mm")
    for split, ids in formats.MMIMDB_SPLITS.items():
        ds = load("mmimdb", root, split, data_config, tmp_path)
        assert [s.id for s in ds] == ids
        for s in ds:
            assert s.text == f"the longest plot of movie {s.id}"  # the longest plot
            assert s.image_id == s.id  # one poster per movie
            assert_matches(s.image, f"mm{s.id}", data_config)
            want = [g for g in formats.MMIMDB_GENRES[s.id] if g in GENRES]
            assert s.label.dtype == torch.float32 and s.label.shape == (23,)
            assert sorted(GENRES[i] for i in s.label.nonzero().flatten()) == sorted(want)
    first = load("mmimdb", root, "train", data_config, tmp_path)[0].label
    assert first[:2].tolist() == [1.0, 1.0] and first.sum() == 2  # Drama, Comedy


def test_food101(tmp_path, data_config):
    from vilalign.data.food101 import CLASSES

    root = formats.food101(tmp_path / "food")
    assert len(CLASSES) == 101
    for split, rows in formats.FOOD_ROWS.items():
        ds = load("food101", root, split, data_config, tmp_path)
        assert len(ds) == len(rows)
        for s, (file, title, cls) in zip(ds, rows, strict=True):
            assert (s.id, s.image_id, s.text, CLASSES[int(s.label)]) == (file, file, title, cls)
            assert_matches(s.image, f"food{file}", data_config)


def test_food101_unknown_class_names_line(tmp_path, data_config):
    root = formats.food101(tmp_path / "food")
    with (root / "texts" / "train_titles.csv").open("a") as f:
        f.write("x.jpg,Some title,spaghetti_napoletana\n")
    with pytest.raises(DataFormatError, match=r"train_titles\.csv:4: unknown class"):
        load("food101", root, "train", data_config, tmp_path)


def test_vqa_normalisation_and_scores():
    assert [normalize_answer(a) for a in ("Two", "a dog.", "Dog", "isnt", "3.5", "1,000")] == [
        "2",
        "dog",
        "dog",
        "isn't",
        "3.5",
        "1000",
    ]
    humans = [normalize_answer(a) for a in formats.VQA_Q1_ANSWERS]
    scores = [soft_score(a, humans) for a in ("2", "dog", "red", "blue", "cat")]
    assert scores == pytest.approx([1.0, 0.9, 0.6, 0.3, 0.0])


def test_vqa(tmp_path, data_config):
    root = formats.vqa(tmp_path / "vqa")
    train = load("vqa", root, "train", data_config, tmp_path)
    vocab = train.answer_vocab
    assert vocab[:2] == ["2", "blue"] and set(vocab) == {"2", "blue", "dog", "red", "yes"}
    assert len(train) == 6
    q1 = next(s for s in train if s.id == "1")
    assert q1.text == "How many dogs?"
    got = {vocab[i]: float(q1.label[i]) for i in q1.label.nonzero().flatten()}
    assert got == pytest.approx({"2": 1.0, "dog": 0.9, "red": 0.6, "blue": 0.3})
    for s, (qid, image_id, question, _, _) in zip(train, formats.VQA_TRAIN, strict=True):
        assert (s.id, s.text, s.image_id) == (str(qid), question, str(image_id))
        assert_matches(s.image, f"cocotrain2014{image_id}", data_config)
    # val uses the train vocabulary; a smaller vocabulary keeps the most frequent answers,
    # and a question with none of them in it is a bad record (no silent all-zero target)
    with pytest.raises(DataFormatError, match=r"question_id 7: none of its answers"):
        load("vqa", root, "val", data_config, tmp_path, vqa_answer_vocab_size=2)
    val = load(
        "vqa", root, "val", data_config, tmp_path, vqa_answer_vocab_size=2, on_bad_record="skip"
    )
    assert val.answer_vocab == ["2", "blue"] and len(val) == 0 and val.skipped == 1
    for split, rows in formats.VQA_TEST.items():
        ds = load("vqa", root, split, data_config, tmp_path)
        assert len(ds) == len(rows) and ds[0].label is None
        assert_matches(ds[0].image, f"cocotest2015{rows[0][1]}", data_config)


def test_vqa_vocab_saved_and_reused(tmp_path, data_config):
    from vilalign.data.vqa import save_answer_vocab

    root = formats.vqa(tmp_path / "vqa")
    save_answer_vocab(["yes", "dog"], tmp_path / "vocab.json")
    vocab = str(tmp_path / "vocab.json")
    # (questions 1, 2 and 5 have an answer in it; the others are skipped and counted)
    ds = load("vqa", root, "train", data_config, tmp_path, vqa_answer_vocab=vocab,
              on_bad_record="skip")  # fmt: skip
    assert ds.answer_vocab == ["yes", "dog"] and ds.num_labels == 2
    assert [s.id for s in ds] == ["1", "2", "5"] and ds.skipped == 3


def test_unknown_split_named(tmp_path, data_config):
    root = formats.hateful_memes(tmp_path / "hm")
    with pytest.raises(ConfigError, match=r"'validation'.*dev_seen.*dev \(= dev_seen\)"):
        load("hateful_memes", root, "validation", data_config, tmp_path)


def test_cached_dataset_in_worker_processes(tmp_path, data_config, tokenizer):
    from torch.utils.data import DataLoader

    from vilalign.data import Collator

    root = formats.hateful_memes(tmp_path / "hm")
    ds = load("hateful_memes", root, "train", data_config, tmp_path)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=Collator(tokenizer))
    batches = list(loader)
    assert [i for b in batches for i in b.ids] == [s.id for s in ds]
    for b in batches:
        for image, sid in zip(b.pixel_values, b.ids, strict=True):
            assert_matches(image, f"hm{sid}", data_config)

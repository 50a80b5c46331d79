"""Every published layout, and clear words for every bad record.

Each case of a record a reader cannot use is an error naming the file and line (or field)
under ``on_bad_record: error`` (the default), and a counted, reported skip under ``skip``.
Whole-file problems (an empty split file) are errors under either policy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vilalign.data import DataConfig, DataFormatError, build_dataset, build_image_transform

from . import formats

TRANSFORM = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}


def load(name, root, split, **fields):
    cfg = DataConfig(name=name, root=str(root), cache={"enabled": False}, **fields)
    return build_dataset(cfg, split, build_image_transform(TRANSFORM, cfg, split))


def test_record_policy_left_out_of_dumps_at_its_default():
    # run configs and experiment cells are named by a hash of their dump
    assert "on_bad_record" not in DataConfig().model_dump()
    assert DataConfig(on_bad_record="skip").model_dump()["on_bad_record"] == "skip"


# ---------------------------------------------------------------------- published layouts


def test_hateful_memes_first_release_names(tmp_path):
    root = formats.hateful_memes_first_release(tmp_path / "hm")
    dev = load("hateful_memes", root, "dev")
    assert len(dev) == formats.HM_SPLITS["dev_seen"]
    # the later name reads the first release's file, and the other way round
    assert [s.id for s in load("hateful_memes", root, "dev_seen")] == [s.id for s in dev]
    test = load("hateful_memes", root, "test")
    assert len(test) == 2 and test[0].label is None  # a test split: labels optional
    later = formats.hateful_memes(tmp_path / "later")
    assert len(load("hateful_memes", later, "dev")) == formats.HM_SPLITS["dev_seen"]
    with pytest.raises(DataFormatError, match=r"'dev_unseen' not found \(no dev_unseen\.jsonl"):
        load("hateful_memes", root, "dev_unseen")


def test_food101_texts_txt_layout_reads_as_the_csv_one(tmp_path):
    txt = formats.food101_txt(tmp_path / "txt")
    csv = formats.food101(tmp_path / "csv")
    for split in formats.FOOD_ROWS:
        a, b = load("food101", txt, split), load("food101", csv, split)
        # (the CSV keeps file order; the folder walk sorts by class, then file)
        key = sorted((s.id, s.text, int(s.label)) for s in a)
        assert key == sorted((s.id, s.text, int(s.label)) for s in b)
        images = [{Path(r.image).relative_to(root) for r in d.records} for d, root in
                  ((a, txt), (b, csv))]  # fmt: skip
        assert images[0] == images[1]


def test_food101_image_without_its_text_file(tmp_path):
    root = formats.food101_txt(tmp_path / "food")
    missing = root / "texts_txt" / "waffles" / "waffles_3.txt"
    missing.unlink()
    with pytest.raises(DataFormatError, match=rf"waffles_3\.jpg: no text file {missing}"):
        load("food101", root, "train")
    ds = load("food101", root, "train", on_bad_record="skip")
    assert sorted(s.id for s in ds) == ["apple_pie_0.jpg", "sushi_7.jpg"] and ds.skipped == 1


# ---------------------------------------------------------------------- bad records


def _edit_line(path, n, edit):
    lines = path.read_text().splitlines()
    lines[n] = json.dumps({**json.loads(lines[n]), **edit})
    path.write_text("\n".join(lines) + "\n")


def test_hateful_memes_float_label(tmp_path, caplog):
    root = formats.hateful_memes(tmp_path / "hm")
    _edit_line(root / "train.jsonl", 2, {"label": 1.0})
    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: unknown label 1\.0 .*integer"):
        load("hateful_memes", root, "train")
    with caplog.at_level(logging.WARNING):
        ds = load("hateful_memes", root, "train", on_bad_record="skip")
    assert len(ds) == 3 and ds.skipped == 1
    assert {type(r.target) for r in ds.records} == {int}
    assert "skipped 1 bad record(s)" in caplog.text and "train.jsonl:3" in caplog.text
    assert ds.loading_report()["bad_records"][0].startswith(f"{root}/train.jsonl:3")


def test_mmimdb_movie_with_none_of_the_23_genres(tmp_path):
    root = formats.mmimdb(tmp_path / "mm")
    meta = root / "dataset" / "0000002.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "genres": ["Reality-TV"]}))
    with pytest.raises(
        DataFormatError, match=r"0000002\.json: field 'genres': none of \['Reality-TV'\]"
    ):
        load("mmimdb", root, "train")
    ds = load("mmimdb", root, "train", on_bad_record="skip")
    assert [s.id for s in ds] == ["0000001", "0000003"] and ds.skipped == 1
    assert all(s.label.sum() > 0 for s in ds)


def test_vqa_question_with_no_answer_in_the_vocabulary(tmp_path):
    root = formats.vqa(tmp_path / "vqa")
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(["dog", "yes"]))
    with pytest.raises(DataFormatError, match=r"question_id 3: none of its answers \['blue', 'r"):
        load("vqa", root, "train", vqa_answer_vocab=str(vocab))
    ds = load("vqa", root, "train", vqa_answer_vocab=str(vocab), on_bad_record="skip")
    assert [s.id for s in ds] == ["1", "2", "5"] and all(s.label.sum() > 0 for s in ds)


def test_food101_title_not_utf8(tmp_path):
    root = formats.food101(tmp_path / "food")
    path = root / "texts" / "train_titles.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"waffles_3.jpg,Caf\xe9 waffles,waffles\r\n"  # Latin-1, not UTF-8
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataFormatError, match=r"train_titles\.csv:2: not UTF-8: byte 0xe9"):
        load("food101", root, "train")
    ds = load("food101", root, "train", on_bad_record="skip")
    assert [s.id for s in ds] == ["apple_pie_0.jpg", "sushi_7.jpg"] and ds.skipped == 1


def test_food101_text_file_not_utf8(tmp_path):
    root = formats.food101_txt(tmp_path / "food")
    (root / "texts_txt" / "sushi" / "sushi_7.txt").write_bytes(b"Sushi\n\xff rolls")
    with pytest.raises(DataFormatError, match=r"sushi_7\.txt: not UTF-8: byte 0xff at line 2"):
        load("food101", root, "train")


def test_food101_unclosed_quote_on_its_own_line(tmp_path):
    root = formats.food101(tmp_path / "food")
    path = root / "texts" / "train_titles.csv"
    lines = path.read_text().splitlines()
    lines[1] = 'waffles_3.jpg,"Belgian waffles recipe,waffles'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train_titles\.csv:2: a quote is opened and never"):
        load("food101", root, "train")
    ds = load("food101", root, "train", on_bad_record="skip")  # the lines after it still read
    assert [s.id for s in ds] == ["apple_pie_0.jpg", "sushi_7.jpg"]


def test_hateful_memes_line_not_utf8(tmp_path):
    root = formats.hateful_memes(tmp_path / "hm")
    path = root / "train.jsonl"
    path.write_bytes(path.read_bytes().replace(b"meme text 42002", b"meme text \xe942002"))
    with pytest.raises(DataFormatError, match=r"train\.jsonl:2: not UTF-8: byte 0xe9 at column"):
        load("hateful_memes", root, "train")


@pytest.mark.parametrize(
    ("name", "write", "empty", "message"),
    [
        ("hateful_memes", formats.hateful_memes, "train.jsonl", r"train\.jsonl: empty file"),
        ("food101", formats.food101, "texts/train_titles.csv", r"titles\.csv: empty file"),
    ],
)
def test_empty_split_file_is_an_error_under_either_policy(tmp_path, name, write, empty, message):
    root = write(tmp_path / name)
    (root / empty).write_text("\n")
    for policy in ("error", "skip"):
        with pytest.raises(DataFormatError, match=message):
            load(name, root, "train", on_bad_record=policy)


def test_empty_mmimdb_and_vqa_splits(tmp_path):
    mm = formats.mmimdb(tmp_path / "mm")
    (mm / "split.json").write_text(json.dumps({**formats.MMIMDB_SPLITS, "train": []}))
    with pytest.raises(DataFormatError, match=r"split\.json: field 'train' lists no movies"):
        load("mmimdb", mm, "train")
    vqa = formats.vqa(tmp_path / "vqa")
    (vqa / "v2_OpenEnded_mscoco_test2015_questions.json").write_text('{"questions": []}')
    with pytest.raises(DataFormatError, match=r"test2015_questions\.json: field 'questions' is"):
        load("vqa", vqa, "test")

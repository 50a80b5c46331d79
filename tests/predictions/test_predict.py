"""``predict_split`` and ``vilalign predict`` end to end: a tiny model with named labels over
fixture copies of each dataset, the files read back in their official formats."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vilalign.cli import main
from vilalign.config import model_config
from vilalign.data import DataConfig
from vilalign.data.food101 import CLASSES
from vilalign.data.hateful_memes import LABEL_NAMES
from vilalign.model import build_model, load_tokenizer, save_pretrained
from vilalign.predictions import predict_split

from ..data import formats

VQA_VOCAB = ["2", "blue", "dog", "red", "yes"]  # the fixture's train answers, by frequency


def tiny(num_labels, names, seed=0):
    torch.manual_seed(seed)
    model = build_model(model_config("tiny", num_labels=num_labels, label_names=names)).eval()
    return model, load_tokenizer(model.config.text)


def data(name, root, **fields):
    return DataConfig(name=name, root=str(root), cache={"enabled": False}, **fields)


def test_hateful_memes_dev_seen(tmp_path):
    model, tok = tiny(1, list(LABEL_NAMES))
    root = formats.hateful_memes(tmp_path / "hm")
    report = predict_split(model, tok, data("hateful_memes", root), "dev_seen", tmp_path / "out")
    submission, summary = report.files
    with submission.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "proba", "label"] and len(rows) == 2
    assert all(0 < float(r["proba"]) < 1 and r["label"] == str(int(float(r["proba"]) > 0.5))
               for r in rows)  # fmt: skip
    saved = json.loads(summary.read_text())
    assert saved["samples"] == 2 and set(saved["metrics"]) == {"auroc", "accuracy"}


def test_vqa_results_and_official_accuracy(tmp_path):
    model, tok = tiny(len(VQA_VOCAB), VQA_VOCAB)
    root = formats.vqa(tmp_path / "vqa")
    report = predict_split(model, tok, data("vqa", root), "val", tmp_path / "out")
    results = json.loads(report.files[0].read_text())
    assert report.files[0].name == "vqa_OpenEnded_mscoco_val2014_vilalign_results.json"
    assert [set(r) for r in results] == [{"question_id", "answer"}]
    assert isinstance(results[0]["question_id"], int) and results[0]["answer"] in VQA_VOCAB
    accuracy = json.loads(report.files[1].read_text())
    assert set(accuracy) == {"overall", "perQuestionType", "perAnswerType"}
    want = {"dog": 100.0, "cat": 60.0}.get(results[0]["answer"], 0.0)  # 8 dog, 2 cat
    assert accuracy["overall"] == want and accuracy["perAnswerType"] == {"other": want}
    # test-dev: no annotations, the results file only; every question answered
    report = predict_split(model, tok, data("vqa", root), "test-dev", tmp_path / "td")
    assert [r["question_id"] for r in json.loads(report.files[0].read_text())] == [8]
    assert report.metrics == {}


def test_mmimdb_and_food101(tmp_path):
    model, tok = tiny(23, None)  # no names saved: the dataset's are used (with a warning)
    root = formats.mmimdb(tmp_path / "mm")
    report = predict_split(model, tok, data("mmimdb", root), "dev", tmp_path / "mm-out")
    assert [f.name for f in report.files] == [
        "mmimdb_dev_predictions.csv", "mmimdb_dev_f1.csv", "mmimdb_dev_metrics.json",
    ]  # fmt: skip
    assert {"f1_micro", "f1_macro", "f1_weighted", "f1_samples"} == set(report.metrics)
    model, tok = tiny(101, list(CLASSES))
    root = formats.food101(tmp_path / "food")
    report = predict_split(model, tok, data("food101", root), "test", tmp_path / "f-out")
    with report.files[0].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["pho_1.jpg", "apple_pie_9.jpg"]
    assert all(len(r["top5"].split("|")) == 5 and r["prediction"] in CLASSES for r in rows)
    assert 0 <= report.metrics["top1_accuracy"] <= report.metrics["top5_accuracy"] <= 1


def test_labels_that_are_not_the_datasets_are_refused(tmp_path):
    model, tok = tiny(101, [f"dish {i}" for i in range(101)])
    root = formats.food101(tmp_path / "food")
    with pytest.raises(ValueError, match=r"label 0 is 'dish 0' in the model, 'apple_pie' in the"):
        predict_split(model, tok, data("food101", root), "test", tmp_path / "out")


def test_predict_command_on_easyvqa(tmp_path, capsys):
    model, tok = tiny(13, None)
    from vilalign.data.easyvqa import answers

    model.config = model.config.model_copy(update={"label_names": answers()})
    folder = save_pretrained(model, tmp_path / "model", tok)
    out = tmp_path / "preds"
    argv = ["predict", "--checkpoint", str(folder), "--limit", "24", "--output-dir", str(out),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy: " in printed and "wrote " in printed
    with (out / "easyvqa_test_predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and rows[0]["id"] == "test-0" and rows[0]["answer"] in answers()
    metrics = json.loads((out / "easyvqa_test_metrics.json").read_text())["metrics"]
    families = [k for k in metrics if k.startswith("accuracy/")]
    n = {f: sum(r["family"] == f.split("/", 1)[1] for r in rows) for f in families}
    overall = sum(metrics[f] * n[f] for f in families) / 24
    assert np.isclose(overall, metrics["accuracy"])  # the families partition the questions


def test_predict_command_errors_are_one_line(tmp_path, capsys):
    model, tok = tiny(0, None)
    folder = save_pretrained(model, tmp_path / "pretrained", tok)
    assert main(["predict", "--checkpoint", str(folder), "--device", "cpu"]) == 2
    assert "no task head" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such model folder" in err

"""Each dataset's prediction file, read back in its community's format, and its metrics
checked against an independent computation."""

from __future__ import annotations

import csv
import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from vilalign.data import DataConfig
from vilalign.data.base import Record
from vilalign.data.mmimdb import GENRES
from vilalign.data.vqa import soft_score
from vilalign.predictions import FORMATS, Context, Predictions
from vilalign.predictions.vqa import official_accuracy


def ctx(name, split, tmp_path, records=(), root=None):
    data = DataConfig.model_construct(name=name, root=root)  # (no checks: no files needed)
    return Context(SimpleNamespace(records=list(records)), data, split, tmp_path)


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_hateful_memes_challenge_csv(tmp_path):
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]], np.float32)
    labels = np.array([1, 0, 0, 0])
    p = Predictions(["1", "2", "3", "4"], logits, labels, ["not hateful", "hateful"])
    report = FORMATS["hateful_memes"].write(p, ctx("hateful_memes", "dev_seen", tmp_path))
    (path,) = report.files
    rows = read_csv(path)
    assert path.read_text().splitlines()[0] == "id,proba,label"  # the challenge's header
    proba = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    np.testing.assert_allclose([float(r["proba"]) for r in rows], proba)
    assert [int(r["label"]) for r in rows] == [1, 0, 1, 0]
    assert report.metrics["auroc"] == pytest.approx(roc_auc_score(labels, proba))
    assert report.metrics["accuracy"] == pytest.approx(0.75)


def test_mmimdb_per_genre_f1_and_its_averages(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random((40, len(GENRES))) < 0.2
    logits = np.where(rng.random(y.shape) < 0.8, np.where(y, 1.0, -1.0), rng.normal(size=y.shape))
    p = Predictions([str(i) for i in range(40)], logits.astype(np.float32), y.astype(np.float32),
                    list(GENRES))  # fmt: skip
    report = FORMATS["mmimdb"].write(p, ctx("mmimdb", "test", tmp_path))
    predictions, table = (read_csv(f) for f in report.files)
    first = [g for g, chosen in zip(GENRES, logits[0] > 0, strict=True) if chosen]
    assert predictions[0]["genres"] == "|".join(first)
    rows = {r["genre"]: r for r in table}
    assert list(rows)[:23] == list(GENRES)
    for avg in ("micro", "macro", "weighted", "samples"):
        want = f1_score(y, logits > 0, average=avg, zero_division=0)
        assert float(rows[f"{avg} avg"]["f1-score"]) == pytest.approx(want)
        assert report.metrics[f"f1_{avg}"] == pytest.approx(want)
    drama = f1_score(y[:, 0], logits[:, 0] > 0, zero_division=0)
    assert float(rows["Drama"]["f1-score"]) == pytest.approx(drama)
    assert int(float(rows["Drama"]["support"])) == int(y[:, 0].sum())


def test_food101_top1_and_top5(tmp_path):
    names = [f"class{i}" for i in range(8)]
    logits = np.tile(np.arange(8, 0, -1, dtype=np.float32), (3, 1))  # ranks: class0 first
    labels = np.array([0, 4, 6])  # rank 1, rank 5, rank 7
    p = Predictions(["a.jpg", "b.jpg", "c.jpg"], logits, labels, names)
    report = FORMATS["food101"].write(p, ctx("food101", "test", tmp_path))
    rows = read_csv(report.files[0])
    assert rows[0] == {
        "id": "a.jpg",
        "prediction": "class0",
        "top5": "class0|class1|class2|class3|class4",
    }
    assert report.metrics == {
        "top1_accuracy": pytest.approx(1 / 3),
        "top5_accuracy": pytest.approx(2 / 3),
    }


def test_easyvqa_accuracy_per_question_family(tmp_path):
    questions = ["what shape is in the image?", "what color is the shape?",
                 "is there a red shape?", "is there not a circle?"]  # fmt: skip
    records = [Record(f"test-{i}", "x.png", "x", q, 0) for i, q in enumerate(questions)]
    names = ["circle", "red", "yes", "no"]
    logits = np.eye(4, dtype=np.float32)[[0, 1, 3, 3]]  # the third answer is wrong
    p = Predictions([r.id for r in records], logits, np.array([0, 1, 2, 3]), names)
    report = FORMATS["easyvqa"].write(p, ctx("easyvqa", "test", tmp_path, records))
    rows = read_csv(report.files[0])
    assert [r["family"] for r in rows] == ["shape", "color", "yes/no", "yes/no negated"]
    assert [r["answer"] for r in rows] == ["circle", "red", "no", "no"]
    assert report.metrics == {
        "accuracy": 0.75,
        "accuracy/color": 1.0,
        "accuracy/shape": 1.0,
        "accuracy/yes/no": 0.0,
        "accuracy/yes/no negated": 1.0,
    }


def test_soft_score_is_the_mean_over_the_ten_sets_of_nine():
    """The closed form against the official rule spelt out: leave each human out in turn,
    score min(#matching among the other 9 / 3, 1), average."""
    rng = random.Random(0)
    for _ in range(200):
        humans = [rng.choice("aabcd") for _ in range(10)]
        answer = rng.choice("abcde")
        brute = np.mean(
            [min(sum(h == answer for h in others) / 3, 1.0)
             for others in itertools.combinations(humans, 9)]
        )  # fmt: skip
        assert soft_score(answer, humans) == pytest.approx(brute)


def test_vqa_official_accuracy_per_answer_and_question_type():
    annotations = {
        1: {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        2: {"answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number", "question_type": "how many"},
        3: {"answers": ["dog"] * 10, "answer_type": "other", "question_type": "what is"},
    }
    answers = {1: "Yes", 2: "two", 3: "a cat."}  # normalised before scoring: yes, 2, cat
    got = official_accuracy(answers, annotations)
    assert got == {
        "overall": round(100 * (1.0 + 0.6 + 0.0) / 3, 2),
        "perQuestionType": {"how many": 60.0, "is the": 100.0, "what is": 0.0},
        "perAnswerType": {"number": 60.0, "other": 0.0, "yes/no": 100.0},
    }
    with pytest.raises(ValueError, match="question_id 9: not in the annotations"):
        official_accuracy({9: "yes"}, annotations)


def test_generic_format_for_a_dataset_without_its_own(tmp_path, monkeypatch):
    from vilalign.data import registry
    from vilalign.data.types import DatasetInfo, TaskInfo
    from vilalign.predictions import prediction_format

    info = DatasetInfo(name="toy", splits=("train",), num_labels=3,
                       task=TaskInfo(loss="multiclass", monitor="accuracy"))  # fmt: skip
    monkeypatch.setitem(registry._DATASETS, "toy", SimpleNamespace(info=info))
    fmt = prediction_format("toy")
    p = Predictions(
        ["x", "y"], np.eye(3, dtype=np.float32)[[2, 0]], np.array([2, 1]), ["a", "b", "c"]
    )
    report = fmt.write(p, ctx("toy", "train", tmp_path))
    assert read_csv(report.files[0]) == [
        {"id": "x", "prediction": "c"},
        {"id": "y", "prediction": "a"},
    ]
    assert report.metrics == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="no labels to predict"):
        prediction_format("easyvqa_captions")

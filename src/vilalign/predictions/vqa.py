"""VQA v2 predictions in the official formats.

The results file the evaluation server takes — ``[{"question_id": int, "answer": str}]``,
named as the official evaluation asks (``vqa_OpenEnded_mscoco_<subtype>_<alg>_results.json``)
— and, where the split has annotations (train, val), the official accuracy: each answer
normalised (punctuation, digits, articles; ``vilalign.data.vqa.normalize_answer``) and scored
``min(#humans who gave it / 3, 1)`` averaged over the 10 sets of 9 of the 10 human answers
(``soft_score``), in percent with two decimals, overall, per answer type (yes/no, number,
other) and per question type, as the official ``accuracy`` dictionary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vilalign.data import DataConfig, ImageTransform
from vilalign.data.vqa import (
    SUBTYPES,
    VQAv2,
    annotation_details,
    annotations_file,
    normalize_answer,
    soft_score,
)
from vilalign.io import write_json_atomic
from vilalign.predictions.formats import Context, Report, register_format
from vilalign.predictions.infer import Predictions

ALGORITHM = "vilalign"  # the <alg> part of the official file names


def build_vqa(
    data: DataConfig, split: str, transform: ImageTransform, label_names: list[str] | None
) -> Dataset:
    """The split with the model's answer vocabulary (its head's outputs), no soft targets:
    every question is predicted, and scored against the annotations, not the vocabulary."""
    vocab = label_names if label_names is not None else data.vqa_answer_vocab
    return VQAv2(
        data.root,  # type: ignore[arg-type]  (vqa needs a root: the config has one)
        split,
        transform,
        answer_vocab=vocab,
        vocab_size=data.vqa_answer_vocab_size,
        targets=False,
        **data.reader_options(),
    )


def _percent(scores: list[float]) -> float:
    return round(100 * float(np.mean(scores)), 2)


def official_accuracy(
    answers: Mapping[int, str], annotations: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """The official accuracy of ``answers`` ({question_id: answer}) against
    ``annotations`` (:func:`vilalign.data.vqa.annotation_details`)."""
    scores: dict[int, float] = {}
    by_type: dict[str, dict[str, list[float]]] = {
        "perQuestionType": defaultdict(list),
        "perAnswerType": defaultdict(list),
    }
    for qid, answer in answers.items():
        if qid not in annotations:
            raise ValueError(f"question_id {qid}: not in the annotations")
        ann = annotations[qid]
        scores[qid] = soft_score(normalize_answer(answer), ann["answers"])
        for key, field in (("perQuestionType", "question_type"), ("perAnswerType", "answer_type")):
            if ann.get(field) is not None:
                by_type[key][ann[field]].append(scores[qid])
    out: dict[str, Any] = {"overall": _percent(list(scores.values()))}
    for key, groups in by_type.items():
        out[key] = {name: _percent(values) for name, values in sorted(groups.items())}
    return out


@register_format("vqa", build=build_vqa)
def vqa(p: Predictions, ctx: Context) -> Report:
    """The results JSON and, with annotations, the official accuracy JSON."""
    subtype = SUBTYPES[ctx.split]
    stem = f"vqa_OpenEnded_mscoco_{subtype}_{ALGORITHM}"
    answers = {int(qid): p.label_names[k] for qid, k in zip(p.ids, p.logits.argmax(1), strict=True)}
    results = [{"question_id": qid, "answer": a} for qid, a in answers.items()]
    report = Report([ctx.out_dir / f"{stem}_results.json"])
    write_json_atomic(report.files[0], results)
    root = Path(ctx.data.root or ".")
    if ctx.split not in ("train", "val") or not annotations_file(root, ctx.split).is_file():
        return report  # test splits: the server scores them
    accuracy = official_accuracy(answers, annotation_details(root, ctx.split))
    report.files.append(ctx.out_dir / f"{stem}_accuracy.json")
    write_json_atomic(report.files[1], accuracy)
    report.metrics = {"vqa_accuracy": accuracy["overall"] / 100}
    for name, value in accuracy["perAnswerType"].items():
        report.metrics[f"vqa_accuracy/{name}"] = value / 100
    return report

"""Per dataset, the files its community submits or reads, and the metrics it reports.

A format is registered for a dataset name (:func:`register_format`); a dataset without one
gets the generic format of its loss kind (a CSV of predictions, the task's metrics), so a
new dataset predicts with no code here. Every writer takes the :class:`Predictions` and
the :class:`Context` (the dataset object, its config, the split, the output folder) and
returns the files it wrote and the metrics (fractions in [0, 1], except where the
community's own format says otherwise, as VQA's percentages).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, roc_auc_score
from torch.utils.data import Dataset

from vilalign.data import DataConfig, ImageTransform, build_dataset, dataset_info
from vilalign.io import write_text_atomic
from vilalign.predictions.infer import Predictions


@dataclass
class Context:
    """What a writer needs besides the predictions."""

    dataset: Dataset
    data: DataConfig
    split: str
    out_dir: Path


@dataclass
class Report:
    """The files one prediction run wrote and the metrics it measured (empty without labels)."""

    files: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


Writer = Callable[[Predictions, Context], Report]
#: (data config, split, evaluation transform, the model's label names) -> the dataset
Builder = Callable[[DataConfig, str, ImageTransform, "list[str] | None"], Dataset]


def build_default(
    data: DataConfig, split: str, transform: ImageTransform, label_names: list[str] | None
) -> Dataset:
    return build_dataset(data, split, transform)


@dataclass(frozen=True)
class PredictionFormat:
    """One dataset's prediction files: ``write`` them; ``build`` the dataset to predict on
    (VQA's uses the model's answer vocabulary)."""

    name: str
    write: Writer
    build: Builder = build_default


FORMATS: dict[str, PredictionFormat] = {}


def register_format(dataset: str, build: Builder = build_default) -> Callable[[Writer], Writer]:
    """Decorator: ``write`` is the prediction format of ``dataset``."""

    def register(write: Writer) -> Writer:
        if dataset in FORMATS:
            raise ValueError(f"prediction format for {dataset!r} registered twice")
        FORMATS[dataset] = PredictionFormat(dataset, write, build)
        return write

    return register


def prediction_format(dataset: str) -> PredictionFormat:
    """The registered format of ``dataset``, else the generic one of its loss kind."""
    if dataset in FORMATS:
        return FORMATS[dataset]
    info = dataset_info(dataset)
    if info.task is None:
        raise ValueError(f"dataset {dataset!r} has no labels to predict (caption data)")
    return PredictionFormat(dataset, generic)


# ---------------------------------------------------------------------------- helpers


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV with a header row, written atomically."""
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return path


def file_name(ctx: Context, what: str, suffix: str = "csv") -> Path:
    return ctx.out_dir / f"{ctx.data.name}_{ctx.split}_{what}.{suffix}"


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(y == predicted))


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """AUROC; NaN when one class is absent (a tiny split), where it is undefined."""
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else math.nan


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices, best first (ties: the lower index, as argmax)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------- formats


@register_format("hateful_memes")
def hateful_memes(p: Predictions, ctx: Context) -> Report:
    """The challenge's submission CSV (``id,proba,label``: the probability of 'hateful' and
    the label it gives at 0.5) and, with labels, AUROC (the challenge's metric) and accuracy."""
    proba = p.probabilities[:, 0]
    label = (proba > 0.5).astype(int)
    rows = zip(p.ids, (float(x) for x in proba), label.tolist(), strict=True)
    report = Report([write_csv(file_name(ctx, "submission"), ("id", "proba", "label"), rows)])
    if p.labels is not None:
        y = p.labels.reshape(-1).astype(int)
        report.metrics = {"auroc": auroc(y, proba), "accuracy": accuracy(y, label)}
    return report


@register_format("mmimdb")
def mmimdb(p: Predictions, ctx: Context) -> Report:
    """The genres each movie is given (probability > 0.5) and, with labels, the per-genre
    precision / recall / F1 table with its micro, macro, weighted and samples averages
    (sklearn's classification report, as the MM-IMDb papers report F1)."""
    chosen = p.logits > 0  # sigmoid > 0.5
    genres = ["|".join(n for n, c in zip(p.label_names, row, strict=True) if c) for row in chosen]
    report = Report(
        [
            write_csv(
                file_name(ctx, "predictions"), ("id", "genres"), zip(p.ids, genres, strict=True)
            )
        ]
    )
    if p.labels is None:
        return report
    table = classification_report(
        p.labels > 0.5, chosen, target_names=p.label_names, output_dict=True, zero_division=0
    )
    columns = ("precision", "recall", "f1-score", "support")
    rows = [(name, *(table[name][c] for c in columns)) for name in table]
    report.files.append(write_csv(file_name(ctx, "f1"), ("genre", *columns), rows))
    averages = ("micro", "macro", "weighted", "samples")
    report.metrics = {f"f1_{a}": float(table[f"{a} avg"]["f1-score"]) for a in averages}
    return report


@register_format("food101")
def food101(p: Predictions, ctx: Context) -> Report:
    """The predicted class and the five best of each image; top-1 and top-5 accuracy."""
    best = top_k(p.logits, min(5, p.logits.shape[1]))
    names = np.asarray(p.label_names)
    rows = ((i, names[b[0]], "|".join(names[b])) for i, b in zip(p.ids, best, strict=True))
    report = Report([write_csv(file_name(ctx, "predictions"), ("id", "prediction", "top5"), rows)])
    if p.labels is not None:
        y = p.labels.reshape(-1).astype(int)
        report.metrics = {
            "top1_accuracy": accuracy(y, best[:, 0]),
            "top5_accuracy": float(np.mean((best == y[:, None]).any(axis=1))),
        }
    return report


@register_format("easyvqa")
def easyvqa(p: Predictions, ctx: Context) -> Report:
    """Each question's answer and family; accuracy overall and per question family
    (``vilalign.data.easyvqa.question_family``: shape, color, yes/no, yes/no negated)."""
    from vilalign.data.easyvqa import question_family

    texts = {r.id: r.text for r in ctx.dataset.records}  # type: ignore[attr-defined]
    families = [question_family(texts[i]) for i in p.ids]
    answers = [p.label_names[k] for k in p.logits.argmax(axis=1)]
    rows = zip(p.ids, (texts[i] for i in p.ids), answers, families, strict=True)
    header = ("id", "question", "answer", "family")
    report = Report([write_csv(file_name(ctx, "predictions"), header, rows)])
    if p.labels is not None:
        right = p.labels.reshape(-1).astype(int) == p.logits.argmax(axis=1)
        report.metrics = {"accuracy": float(right.mean())}
        for family in sorted(set(families)):
            mask = np.array([f == family for f in families])
            report.metrics[f"accuracy/{family}"] = float(right[mask].mean())
    return report


def generic(p: Predictions, ctx: Context) -> Report:
    """Any other dataset: its predictions by the loss kind it declares, and the metrics of
    that kind (accuracy; AUROC for a binary task; F1 for a multi-label one)."""
    loss = dataset_info(ctx.data.name).task.loss  # type: ignore[union-attr]
    if loss == "binary":
        return hateful_memes(p, ctx)  # the same file and metrics fit any binary task
    if loss == "multilabel":
        return mmimdb(p, ctx)
    best = p.logits.argmax(axis=1)
    names = [p.label_names[k] for k in best]
    rows = zip(p.ids, names, strict=True)
    report = Report([write_csv(file_name(ctx, "predictions"), ("id", "prediction"), rows)])
    if p.labels is not None and loss == "multiclass":
        report.metrics = {"accuracy": accuracy(p.labels.reshape(-1).astype(int), best)}
    elif p.labels is not None:  # soft targets: the score of the chosen answer
        report.metrics = {"accuracy": float(np.take_along_axis(p.labels, best[:, None], 1).mean())}
    return report

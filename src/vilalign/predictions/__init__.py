"""Predictions of a fine-tuned model on a split, in the file each dataset's community
submits or reads, with the metrics it reports.

    model = from_pretrained("runs/ft/model").to(device)
    report = predict_split(model, load_checkpoint_tokenizer("runs/ft/model"),
                           DataConfig(name="hateful_memes", root="data/hm"), "dev_seen", "preds/")
    report.files     # hateful_memes_dev_seen_submission.csv (id,proba,label), metrics JSON
    report.metrics   # {"auroc": ..., "accuracy": ...}

VQA v2: the official results JSON (and accuracy per answer and question type where the
split has annotations); Hateful Memes: the challenge CSV, AUROC, accuracy; MM-IMDb: the
genres and per-genre F1 with micro / macro / weighted / samples averages; Food-101: top-1 /
top-5; easy-VQA: accuracy by question family; any other dataset: a CSV and its task's
metrics (:mod:`vilalign.predictions.formats`). Nothing here prints.
"""

from __future__ import annotations

import math
from pathlib import Path

from vilalign.data import DataConfig, build_transform
from vilalign.data.base import dataset_label_names
from vilalign.io import write_json_atomic
from vilalign.model import VilbertModel, unwrap
from vilalign.predictions import vqa as _vqa  # noqa: F401  (registers the VQA format)
from vilalign.predictions.formats import (
    FORMATS,
    Context,
    PredictionFormat,
    Report,
    prediction_format,
    register_format,
)
from vilalign.predictions.infer import Predictions, label_names_for, predict, require_head

__all__ = [
    "FORMATS",
    "Context",
    "PredictionFormat",
    "Predictions",
    "Report",
    "label_names_for",
    "predict",
    "predict_split",
    "prediction_format",
    "register_format",
]


def predict_split(
    model: VilbertModel,
    tokenizer: object,
    data: DataConfig,
    split: str,
    out_dir: str | Path,
    batch_size: int = 32,
    progress: bool = False,
) -> Report:
    """Run ``model`` (on its device) over ``split`` of ``data`` and write the dataset's
    prediction files and ``<dataset>_<split>_metrics.json`` into ``out_dir``."""
    require_head(model)  # before any data is read
    fmt = prediction_format(data.name)
    transform = build_transform(unwrap(model).image_data_config, train=False)
    dataset = fmt.build(data, split, transform, unwrap(model).config.label_names)
    names = label_names_for(model, dataset_label_names(dataset))
    predictions = predict(model, dataset, tokenizer, names, batch_size, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = fmt.write(predictions, Context(dataset, data, split, out_dir))
    summary = out_dir / f"{data.name}_{split}_metrics.json"
    write_json_atomic(
        summary,
        {
            "dataset": data.name,
            "split": split,
            "samples": len(predictions),
            # NaN (AUROC of a one-class split) as null: strict JSON readers reject NaN
            "metrics": {k: None if math.isnan(v) else v for k, v in report.metrics.items()},
            "files": [p.name for p in report.files],
        },
    )
    report.files.append(summary)
    return report

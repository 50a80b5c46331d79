"""The demo: the whole toolkit on easy-VQA in a few minutes on a CPU.

Pretrains the tiny preset briefly (MLM + MIM + AP on captions built from easy-VQA's
question/answer pairs), fine-tunes it with and without co-attention on a subsample of
easy-VQA, measures alignment per layer after every epoch, compares attention entropy,
draws a few relevancy maps, and writes ``report.html``. The experiment is an ordinary
experiment file (``configs/demo.yaml`` holds the same content; a test keeps them equal).

Sizes are chosen for a 2-core CPU: 32×32 images (easy-VQA's shapes stay recognisable at
that size, and the image stream costs 4× less than at 64×64) and a few thousand samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from vilalign.config import validate
from vilalign.experiments.report import write_report
from vilalign.experiments.runner import ExperimentResult, run_experiment
from vilalign.experiments.spec import ExperimentConfig, expand_grid
from vilalign.experiments.tracking import tracker_factory

DEMO: dict[str, Any] = {
    "name": "demo",
    "description": (
        "easy-VQA, tiny preset: brief MLM+MIM+AP pretraining on easy-VQA captions, then "
        "fine-tuning with co-attention (vilbert) and without (no_coattention); alignment "
        "per layer after every epoch, attention entropy, relevancy maps."
    ),
    "output_dir": "runs/demo",
    "preset": "tiny",
    "model": {"image": {"img_size": 32}, "text": {"max_length": 16}},
    "pretrain": {
        "data": {"name": "easyvqa_captions", "limit": 1600, "captions_per_image": 1},
        "splits": {"val_fraction": 0.05},
        "objectives": {
            "mlm": {"weight": 1.0},
            "mim": {"weight": 0.5, "pattern": "block"},
            "ap": {"weight": 1.0},
        },
        "train": {"batch_size": 32, "epochs": 1, "log_every_n_steps": 10},
        "optim": {"lr": 5.0e-4, "warmup_ratio": 0.1, "encoder_lr_scale": 1.0},
    },
    "finetune": {
        "task": "easyvqa",
        "data": {"name": "easyvqa", "limit": 4000},
        "splits": {"val_fraction": 0.1},
        "train": {"batch_size": 32, "epochs": 4, "log_every_n_steps": 10},
        # The tiny preset's encoders are randomly initialised: no reason to slow them down.
        "optim": {"lr": 5.0e-4, "warmup_ratio": 0.05, "encoder_lr_scale": 1.0},
    },
    "grid": {"baselines": ["vilbert", "no_coattention"], "pretraining": ["all"], "seeds": [0]},
    "analysis": {
        "split": "test",
        "n_samples": 256,
        "measures": ["cka_linear", "cka_unbiased", "mutual_knn"],
        "null_band": 20,
        "attention_samples": 128,
        "attribution_examples": 3,
    },
}


@dataclass
class DemoResult:
    experiment: ExperimentResult
    report: Path
    table: pd.DataFrame
    tracking_uri: str | None = None


def demo_experiment(output_dir: str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """The demo as a validated experiment (``overrides`` merged on top, for tests)."""
    from vilalign.config import deep_merge

    data = deep_merge(copy.deepcopy(DEMO), overrides)
    if output_dir is not None:
        data["output_dir"] = str(output_dir)
    exp = validate(ExperimentConfig, data, source="the demo experiment")
    expand_grid(exp, source="the demo experiment")
    return exp


def run_demo(
    output_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = 1,
    **overrides: Any,
) -> DemoResult:
    """Run (or finish) the demo grid and write its report.

    ``threads``: torch CPU threads while it runs. One by default: on a shared 2-core
    machine two intra-op threads spin against other processes, and training measured
    7.5 samples/s with two threads against 88 with one (same run, same load).
    """
    exp = demo_experiment(output_dir, **overrides)
    factory = tracker_factory(exp, exp.resolved_output_dir())  # None when tracking is off
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run_experiment(exp, tracker_factory=factory, progress=progress)
    finally:
        torch.set_num_threads(before)
    report = write_report(result.out_dir)
    uri = factory.store.uri if factory is not None else None
    return DemoResult(result, report, results_table(result), uri)


def results_table(result: ExperimentResult) -> pd.DataFrame:
    """One row per cell group: test accuracy, last-layer alignment, attention focus."""
    from vilalign.experiments.runner import alignment_tables

    groups = result.groups if result.groups is not None else pd.DataFrame()
    if groups.empty:
        return groups
    metric = next((c for c in ("test/accuracy",) if c in groups.columns), None)
    rows = []
    align = alignment_tables(result.out_dir)
    for _, g in groups.iterrows():
        row = {"cell": g["group"]}
        if metric:
            row[metric] = round(float(g[metric]), 4)
        row.update(_last_layer_alignment(align, str(g["group"])))
        rows.append(row)
    return pd.DataFrame(rows)


def _last_layer_alignment(align: pd.DataFrame, group: str) -> dict[str, float]:
    """Each measure (cls view) at the last fusion layer and the last epoch."""
    if align.empty:
        return {}
    rows = align[(align["run"] == group) & (align["view"] == align["view"].iloc[0])]
    rows = rows[rows["epoch"] == rows["epoch"].max()]
    if rows.empty:
        return {}
    last = list(dict.fromkeys(rows["layer"]))[-1]
    at = rows[rows["layer"] == last]
    return {
        f"{m} @{last}": round(float(v), 3) for m, v in zip(at["measure"], at["value"], strict=True)
    }

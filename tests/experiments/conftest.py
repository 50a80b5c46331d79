"""A grid small enough for seconds: easy-VQA subsampled, 32×32 images, a few steps."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from vilalign.config import deep_merge, validate
from vilalign.experiments.spec import ExperimentConfig
from vilalign.train.tracker import FileTracker

TINY: dict[str, Any] = {
    "name": "tiny-grid",
    "preset": "tiny",
    "model": {
        "text": {"num_layers": 1, "max_length": 12},
        "image": {"img_size": 32, "depth": 1},
        "depth": 2,
        "coattention_layers": [1],
    },
    "pretrain": {
        "data": {"name": "easyvqa_captions", "limit": 32},
        "splits": {"val_fraction": 0.25},
        "train": {"batch_size": 8, "epochs": 1, "max_steps": 2, "progress": False},
    },
    "finetune": {
        "task": "easyvqa",
        "data": {"name": "easyvqa", "limit": 48},
        "splits": {"val_fraction": 0.25},
        "train": {"batch_size": 12, "epochs": 2, "progress": False},
    },
    "tracking": {"enabled": False},
    "analysis": {
        "n_samples": 24,
        "batch_size": 24,
        "measures": ["cka_linear", "mutual_knn"],
        "views": ["cls"],
        "null_band": 3,
        "attention_samples": 24,
        "attribution_examples": 0,
    },
}


def tiny_experiment(out_dir: Path, **overrides: Any) -> ExperimentConfig:
    data = deep_merge(copy.deepcopy(TINY), overrides)
    data["output_dir"] = str(out_dir)
    return validate(ExperimentConfig, data, source="tiny test experiment")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Set up before the module-scoped grid (see the root conftest's one_thread)."""
    yield


@pytest.fixture(scope="module", autouse=True)
def _no_metric_plots():
    """The run folders' metrics.png (redrawn every epoch) costs more than the tiny runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FileTracker, "plot", lambda self: None)
        yield


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created (migrated) once per session: creating one
    takes seconds, copying it milliseconds."""
    from vilalign.experiments.tracking import default_uri, open_client

    folder = tmp_path_factory.mktemp("mlflow-template")
    open_client(default_uri(folder))
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_uri(_mlflow_template, tmp_path) -> str:
    """A fresh MLflow store in this test's folder (a copy of the template)."""
    import shutil

    from vilalign.experiments.tracking import default_uri

    shutil.copy(_mlflow_template, tmp_path / "mlflow.db")
    return default_uri(tmp_path)

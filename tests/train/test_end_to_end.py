"""End-to-end on real easy-VQA (slow: tens of minutes on CPU; excluded from `make test`).

OMP_NUM_THREADS=1 pytest tests/train/test_end_to_end.py -m slow
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vilalign.train.config import FinetuneConfig, PretrainConfig, load_run_config
from vilalign.train.run import run_finetuning, run_pretraining
from vilalign.train.tracker import FileTracker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = {"train": {"progress": False}}


@pytest.mark.slow
def test_tiny_finetuned_on_easyvqa_reaches_95_percent(tmp_path):
    cfg = load_run_config(CONFIGS / "finetune_easyvqa_tiny.yaml", FinetuneConfig, **QUIET)
    result = run_finetuning(cfg, tmp_path / "run")
    assert result.test_metrics["test/accuracy"] >= 0.95


@pytest.mark.slow
def test_pretraining_on_easyvqa_captions_learns_mlm_and_ap(tmp_path):
    cfg = load_run_config(CONFIGS / "pretrain_easyvqa_tiny.yaml", PretrainConfig, **QUIET)
    result = run_pretraining(cfg, tmp_path / "run")
    steps = [r for r in FileTracker(tmp_path / "run").records() if "train/mlm_loss" in r]
    assert steps[-1]["train/mlm_loss"] < 0.5 * steps[0]["train/mlm_loss"]
    assert result.test_metrics["test/ap_accuracy"] > 0.9

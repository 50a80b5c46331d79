"""run_finetuning / run_pretraining on a slice of real easy-VQA, and the run config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vilalign.config import ConfigError, model_config
from vilalign.model import build_model, save_pretrained
from vilalign.train.config import FinetuneConfig, PretrainConfig, load_run_config
from vilalign.train.run import (
    caption_image_key,
    load_encoder_weights,
    run_finetuning,
    run_pretraining,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL_MODEL = {
    "text": {"num_layers": 1, "max_length": 16},
    "image": {"img_size": 32, "depth": 1},
    "depth": 2,
    "coattention_layers": [1],
}


def _data(name: str, tmp_path: Path, limit: int = 16) -> dict:
    return {
        "name": name,
        "limit": limit,
        "cache": {"dir": str(tmp_path / "cache"), "progress": False},
    }


def test_pretrain_then_finetune_from_it(tmp_path):
    train = {"batch_size": 8, "epochs": 1, "progress": False}
    pre = PretrainConfig(
        model=SMALL_MODEL,
        data=_data("easyvqa_captions", tmp_path),
        train=train,
        splits={"val_fraction": 0.25},
    )
    result = run_pretraining(pre, tmp_path / "pre")
    last = result.fit.history[-1]
    for term in ("mlm", "mim", "ap"):
        assert f"train/{term}_loss" in last and f"val/{term}_loss" in last
    assert "test/ap_accuracy" in result.test_metrics
    assert (tmp_path / "pre" / "model" / "model.safetensors").is_file()

    fine = FinetuneConfig(model=SMALL_MODEL, data=_data("easyvqa", tmp_path), train=train)
    result = run_finetuning(fine, tmp_path / "fine", init_from=tmp_path / "pre")
    assert 0.0 <= result.test_metrics["test/accuracy"] <= 1.0
    saved = json.loads((tmp_path / "fine" / "results.json").read_text())
    assert saved["splits"]["test"] == "test" and saved["test"] == result.test_metrics
    assert json.loads((tmp_path / "fine" / "config.json").read_text())["task"] is None
    for name in ("metrics.jsonl", "metrics.csv", "metrics.png"):
        assert (tmp_path / "fine" / name).is_file()
    # The same folder again without resume would mix two runs: refused.
    with pytest.raises(FileExistsError, match="resume"):
        run_finetuning(fine, tmp_path / "fine")


def test_init_from_loads_all_but_a_new_head_and_names_mismatched_keys(tmp_path):
    pretrained = build_model(model_config("tiny", **SMALL_MODEL))  # no task head
    save_pretrained(pretrained, tmp_path / "pre" / "model")
    model = build_model(model_config("tiny", **SMALL_MODEL, num_labels=13))
    load_encoder_weights(model, tmp_path / "pre")  # a run folder: reads its model/
    for name, value in pretrained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    other = build_model(
        model_config("tiny", **{**SMALL_MODEL, "depth": 1, "coattention_layers": [0]})
    )
    with pytest.raises(ValueError, match="unexpected"):
        load_encoder_weights(other, tmp_path / "pre" / "model")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("finetune_*.yaml")))
def test_shipped_finetune_configs_validate(path):
    assert isinstance(load_run_config(path, FinetuneConfig), FinetuneConfig)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("pretrain_*.yaml")))
def test_shipped_pretrain_configs_validate(path):
    assert isinstance(load_run_config(path, PretrainConfig), PretrainConfig)


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\ntrain:\n  batch_size: 8\n  target_batch_size: 12\n")
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        load_run_config(path, FinetuneConfig)
    path.write_text("preset: tiny\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate: unknown field"):
        load_run_config(path, FinetuneConfig)
    path.write_text("preset: tiny\nmodel:\n  fusion: sum\n")
    cfg = load_run_config(path, FinetuneConfig, train={"epochs": 3})
    assert cfg.model.fusion == "sum" and cfg.model.text.max_length == 24 and cfg.train.epochs == 3


def test_caption_image_key():
    from vilalign.data.types import Sample

    def key(sample_id: str) -> str:
        return caption_image_key(Sample(None, "", None, sample_id))

    assert key("train-img12-0") == key("train-img12-1") == "train-img12"
    assert key("train-7") == "train-7"

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
    build_splits,
    load_encoder_weights,
    pretraining_collator,
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


def _ap_only(data: dict) -> tuple[PretrainConfig, object, object]:
    """A config with alignment prediction alone (no MLM/MIM: the texts stay readable),
    and the run's own collator and tokenizer for it."""
    from vilalign.model import load_tokenizer

    cfg = PretrainConfig(
        model=SMALL_MODEL,
        data=data,
        objectives={"mlm": {"weight": 0}, "mim": {"weight": 0}, "ap": {"weight": 1}},
    )
    model = build_model(cfg.model.model_copy(update={"num_labels": 0}))
    tokenizer = load_tokenizer(cfg.model.text)
    return cfg, pretraining_collator(cfg, model, tokenizer), tokenizer


def _negatives(collator, tokenizer, samples, epoch: int) -> dict[int, int]:
    """{row: index of the sample whose caption it got} for the AP negatives of one draw."""
    collator.set_epoch(epoch)
    batch = collator(samples)
    texts = tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True)
    source = {s.text.lower(): j for j, s in enumerate(samples)}
    return {i: source[texts[i]] for i in range(len(samples)) if batch.ap_labels[i] == 0}


def test_negatives_never_take_another_caption_of_the_same_image(tmp_path):
    """Karpathy ids ('391895#3'): in a 2-image × 5-caption batch no alignment-prediction
    negative is another caption of the same image (keyed by sample id, 4,474 of 10,091
    were)."""
    from tests.data.test_karpathy import write_coco

    root = write_coco(tmp_path / "coco")
    data = {"name": "coco_karpathy", "root": str(root), "cache": {"enabled": False}}
    cfg, collator, tokenizer = _ap_only(data)
    train = build_splits(cfg).train.dataset  # (the subset's dataset: every sample)
    samples = [s for s in train if s.image_id in ("0", "1")]
    assert [s.id for s in samples] == [f"{i}#{j}" for i in (0, 1) for j in range(5)]
    negatives = same_image = 0
    for epoch in range(1000):
        for row, j in _negatives(collator, tokenizer, samples, epoch).items():
            negatives += 1
            same_image += samples[row].image_id == samples[j].image_id
    assert negatives > 4000 and same_image == 0
    # the property is testable: keyed by sample id, about 4 in 9 negatives are false
    collator.image_key = lambda s: s.id
    by_id = [
        samples[row].image_id == samples[j].image_id
        for epoch in range(200)
        for row, j in _negatives(collator, tokenizer, samples, epoch).items()
    ]
    assert 0.35 < sum(by_id) / len(by_id) < 0.55


def test_easyvqa_caption_negatives_are_unchanged(tmp_path):
    """The demo pretrains on easy-VQA captions: image ids must draw exactly the negatives
    the id-parsing key drew (recorded from it, seed 0, two captions per image)."""
    cfg, collator, tokenizer = _ap_only(
        {"name": "easyvqa_captions", "captions_per_image": 2, "limit": 16,
         "cache": {"enabled": False}}
    )  # fmt: skip
    samples = [build_splits(cfg).test[i] for i in range(16)]
    assert [s.image_id for s in samples] == [f"test-img{i // 2}" for i in range(16)]
    recorded = {
        0: {0: 3, 1: 14, 3: 11, 4: 3, 5: 7, 6: 0, 8: 0, 9: 7, 12: 9, 13: 14, 14: 11, 15: 12},
        1: {0: 4, 3: 6, 7: 3, 8: 1, 9: 14, 10: 1, 14: 12},
    }
    for epoch, expected in recorded.items():
        assert _negatives(collator, tokenizer, samples, epoch) == expected

"""A fine-tuned model carries its label names and a model card naming its run."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from vilalign.data.easyvqa import answers
from vilalign.model import from_pretrained
from vilalign.train.config import FinetuneConfig
from vilalign.train.run import run_finetuning

SMALL_MODEL = {
    "text": {"num_layers": 1, "max_length": 16},
    "image": {"img_size": 32, "depth": 1},
    "depth": 2,
    "coattention_layers": [1],
}


def test_finetuned_model_stores_label_names_and_its_card(tmp_path):
    cfg = FinetuneConfig(
        model=SMALL_MODEL,
        data={"name": "easyvqa", "limit": 16, "cache": {"dir": str(tmp_path / "c")}},
        train={"batch_size": 8, "epochs": 1, "max_steps": 1, "progress": False},
        splits={"val_fraction": 0.25},  # a held-out Subset: its names are the dataset's
    )
    result = run_finetuning(cfg, tmp_path / "ft")
    model = from_pretrained(result.model_dir)
    assert model.config.label_names == answers() and model.config.num_labels == 13
    # the run's own config (and so its hash) is unchanged: the names are the model's
    assert "label_names" not in json.loads((tmp_path / "ft" / "config.json").read_text())["model"]
    card = ModelCard.load(result.model_dir / "README.md")
    assert card.data.datasets == ["easyvqa"] and card.data.metrics == ["accuracy"]
    assert "| preset | `tiny` |" in card.text and "| test/accuracy |" in card.text

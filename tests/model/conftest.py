from __future__ import annotations

import pytest
import torch

from vilalign.config import ModelConfig, model_config
from vilalign.model import VilbertModel, build_model, load_tokenizer


def make_model(cfg: ModelConfig, seed: int = 0) -> VilbertModel:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return model_config("tiny", num_labels=5)


@pytest.fixture(scope="session")
def tokenizer(tiny_config):
    return load_tokenizer(tiny_config.text)


@pytest.fixture
def tiny_model(tiny_config) -> VilbertModel:
    return make_model(tiny_config)


@pytest.fixture
def inputs(tokenizer):
    enc = tokenizer(
        ["what color is the shape?", "is there a red circle in the image?", "no"],
        padding="max_length",
        max_length=16,
        truncation=True,
        return_tensors="pt",
    )
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64, generator=g)
    return enc["input_ids"], enc["attention_mask"], pixels

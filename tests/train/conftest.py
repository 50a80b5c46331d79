"""Shared fixtures: a smaller-than-tiny model, a toy labelled dataset, a plain collate."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from vilalign.config import ModelConfig, model_config
from vilalign.data import Collator
from vilalign.data.types import Sample
from vilalign.model import load_tokenizer

COLOURS = ["red", "green", "blue", "yellow"]


def small_config(**overrides) -> ModelConfig:
    """The tiny preset cut down further so that a training step takes milliseconds."""
    base = {
        "text": {"num_layers": 1, "max_length": 12},
        "image": {"img_size": 32, "depth": 1},
        "depth": 2,
        "coattention_layers": [1],
        "num_labels": 4,
    }
    return model_config("tiny", **{**base, **overrides})


class ToyDataset(Dataset):
    """Images whose mean colour channel is the class; captions that name the colour."""

    def __init__(self, size: int, seed: int = 0, image_size: int = 32) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(len(COLOURS), (size,), generator=gen)
        self.noise = torch.randn(size, 3, image_size, image_size, generator=gen) * 0.5
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        label = int(self.labels[i])
        image = self.noise[i].clone()
        image[label % 3] += 1.0 if label < 3 else -1.0
        return Sample(image, f"the shape is {COLOURS[label]}", torch.tensor(label), f"toy-{i}")


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(small_config().text)


@pytest.fixture(scope="session")
def collate(tokenizer):
    return Collator(tokenizer, max_length=12, padding="max_length")


@pytest.fixture(scope="session")
def make_config():
    """``small_config`` as a fixture (test modules cannot import conftest under importlib)."""
    return small_config


@pytest.fixture(scope="session")
def toy_dataset():
    return ToyDataset


def pytest_collection_modifyitems(config, items):
    """Skip the slow end-to-end runs (tens of minutes) unless asked for with ``-m slow``."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow end-to-end run: select with -m slow")
    for item in items:
        if "slow" in item.keywords and "tests/train" in str(item.fspath):
            item.add_marker(skip)

"""Preprocessing follows timm's own eval pipeline; augmentation only when training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from vilalign.data import AugmentConfig, build_transform

from .helpers import IMG


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))


def test_eval_transform_equals_timm(data_config, photo):
    ours = build_transform(data_config, train=False)(photo)
    ref = create_transform(**data_config)(photo)
    assert ours.shape == (3, IMG, IMG)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_prepare_is_uint8_hwc_and_finish_batch_matches(data_config, photo):
    t = build_transform(data_config)
    u8 = t.prepare(photo)
    assert u8.dtype == np.uint8 and u8.shape == (3, IMG, IMG)
    flipped = u8[:, ::-1]
    batch = t.finish_batch(np.stack([u8, flipped]))
    assert batch.is_contiguous() and batch.dtype == torch.float32
    assert torch.allclose(batch[0], t.finish(u8)) and torch.allclose(batch[1], t.finish(flipped))


def test_augmentation_only_for_training(data_config, photo):
    aug = AugmentConfig(crop_scale=(0.3, 0.6), hflip=0.5, color_jitter=0.3)
    train = build_transform(data_config, aug, train=True)
    evaluation = build_transform(data_config, aug, train=False)
    assert train.augments and not evaluation.augments
    assert torch.equal(evaluation(photo), evaluation(photo))
    outs = [train(photo) for _ in range(3)]
    assert all(o.shape == (3, IMG, IMG) for o in outs)
    assert not torch.equal(outs[0], outs[1])
    off = build_transform(data_config, AugmentConfig(enabled=False), train=True)
    assert not off.augments


def test_augmentation_follows_torch_seed(data_config, photo):
    """albumentations' own generators are seeded from torch's: seeded runs repeat."""
    aug = AugmentConfig(crop_scale=(0.3, 0.6), hflip=0.5, color_jitter=0.3)

    def draws(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        train = build_transform(data_config, aug, train=True)
        return [train(photo) for _ in range(4)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_cache_key_follows_size_not_normalisation(data_config):
    a = build_transform(data_config).cache_key()
    b = build_transform({**data_config, "mean": (0.1, 0.2, 0.3)}).cache_key()
    c = build_transform({**data_config, "input_size": (3, 16, 16)}).cache_key()
    assert a == b and a != c


def test_missing_keys_named(data_config):
    with pytest.raises(ValueError, match="std"):
        build_transform({k: v for k, v in data_config.items() if k != "std"})

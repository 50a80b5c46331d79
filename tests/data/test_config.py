"""Data configs: a misspelt key or a bad value is an error naming the field."""

from __future__ import annotations

import pytest

from vilalign.config import ConfigError, validate
from vilalign.data import SPLITS, DataConfig


def test_defaults_and_registry_agree():
    cfg = DataConfig()
    assert cfg.name == "easyvqa" and cfg.on_bad_image == "error" and cfg.cache.enabled
    # the config accepts exactly the registered names (read from the registry, not a list)
    assert set(SPLITS) == {
        "hateful_memes", "mmimdb", "food101", "vqa", "easyvqa", "easyvqa_captions",
        "captions_folder", "captions_shards", "coco_karpathy", "flickr30k_karpathy",
    }  # fmt: skip
    for name in SPLITS:
        assert DataConfig(name=name, root="data").name == name


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "cifar10"}, "name"),
        ({"name": "mmimdb"}, "root"),
        ({"cache": {"enabeld": False}}, "cache.enabeld"),
        ({"on_bad_image": "ignore"}, "on_bad_image"),
        ({"augment": {"crop_scale": [0.9, 0.5]}}, "crop_scale"),
        ({"vqa_answer_vocab_size": 0}, "vqa_answer_vocab_size"),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(DataConfig, data, source="data.yaml")

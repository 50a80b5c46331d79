from __future__ import annotations

import json

import pytest

from vilalign.config import PRESETS, ConfigError, ModelConfig, model_config, read_mapping, validate
from vilalign.model import BASELINES, apply_baseline


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name):
    cfg = model_config(name)
    assert cfg.depth == 4 and cfg.coattention_layers == [1, 3]


def test_tiny_preset_is_the_documented_size():
    cfg = model_config("tiny")
    assert (cfg.text.num_layers, cfg.text.hidden_size) == (2, 128)
    assert (cfg.image.img_size, cfg.image.patch_size) == (64, 8)


def test_bad_value_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        model_config("tiny", fusion="max")
    assert "fusion" in str(err.value) and "'concat'" in str(err.value)


def test_misspelt_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"text\.hiden_size: unknown field"):
        model_config("tiny", text={"hiden_size": 64})


def test_coattention_layer_outside_depth():
    with pytest.raises(ConfigError, match=r"coattention_layers: \[7\] outside 0\.\.3"):
        model_config("tiny", coattention_layers=[1, 7])


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="tiny, base, minilm"):
        model_config("huge")


def test_read_yaml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text("depth: 2\ncoattention_layers: [1]\n")
    (tmp_path / "b.json").write_text(json.dumps({"depth": 2, "coattention_layers": [0]}))
    a = validate(ModelConfig, read_mapping(tmp_path / "a.yaml"), "a.yaml")
    b = validate(ModelConfig, read_mapping(tmp_path / "b.json"), "b.json")
    assert (a.depth, a.coattention_layers, b.coattention_layers) == (2, [1], [0])


def test_broken_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{depth: 2")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid json"):
        read_mapping(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="config file not found"):
        read_mapping(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_builds_a_valid_config(name):
    cfg = apply_baseline(model_config("tiny"), name)
    kinds = cfg.fusion_layer_kinds
    if name == "no_coattention":
        assert kinds == [False] * 4
    if name == "concat_features":
        assert kinds == [] and cfg.fusion == "concat"
    if name == "random_text":
        assert cfg.text.init == "random"


def test_unknown_baseline():
    with pytest.raises(ConfigError, match="baseline: unknown baseline 'vilt'"):
        apply_baseline(model_config("tiny"), "vilt")


def test_label_names_must_match_the_head_and_stay_out_of_dumps_when_unset():
    from vilalign.config import ConfigError, model_config

    assert "label_names" not in model_config("tiny", num_labels=3).model_dump()
    named = model_config("tiny", num_labels=3, label_names=["yes", "no", "red"])
    assert named.model_dump()["label_names"] == ["yes", "no", "red"]
    # a binary head (one logit) names its two classes
    assert model_config("tiny", num_labels=1, label_names=["benign", "hateful"]).label_names
    with pytest.raises(ConfigError, match="label_names: 2 names for num_labels=3"):
        model_config("tiny", num_labels=3, label_names=["yes", "no"])

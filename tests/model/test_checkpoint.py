from __future__ import annotations

import json

import pytest
import torch

from vilalign.config import model_config
from vilalign.model import load_pretrained, save_pretrained, unwrap
from vilalign.model.checkpoint import WEIGHTS

from .conftest import make_model


def test_round_trip_gives_bit_identical_logits(tiny_model, inputs, tmp_path, tokenizer):
    save_pretrained(tiny_model, tmp_path / "ckpt", tokenizer=tokenizer)
    loaded = load_pretrained(tmp_path / "ckpt").eval()
    ids, mask, pixels = inputs
    assert torch.equal(tiny_model(ids, mask, pixels).logits, loaded(ids, mask, pixels).logits)
    assert loaded.config == tiny_model.config
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "tokenizer")
    assert reloaded("a red circle")["input_ids"] == tokenizer("a red circle")["input_ids"]


def test_compiled_model_saves_plain_keys(tiny_model, inputs, tmp_path):
    compiled = torch.compile(tiny_model)
    assert unwrap(compiled) is tiny_model
    save_pretrained(compiled, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / WEIGHTS, "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    loaded = load_pretrained(tmp_path).eval()
    ids, mask, pixels = inputs
    assert torch.equal(tiny_model(ids, mask, pixels).logits, loaded(ids, mask, pixels).logits)
    # And the weights load into a compiled wrapper's module too.
    recompiled = torch.compile(make_model(tiny_model.config, seed=9))
    unwrap(recompiled).load_state_dict(loaded.state_dict())
    assert torch.equal(
        unwrap(recompiled)(ids, mask, pixels).logits, tiny_model(ids, mask, pixels).logits
    )


def test_pretrained_text_checkpoint_loads_without_the_source(tmp_path, inputs):
    """The stored text config rebuilds the architecture; no hub, no source folder needed."""
    model = make_model(model_config("minilm", num_labels=2))
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text"]["name_or_path"] = "some-org/not-on-this-machine"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained(tmp_path).eval()
    ids, mask, pixels = inputs
    assert torch.equal(model(ids, mask, pixels).logits, loaded(ids, mask, pixels).logits)


def test_mismatched_weights_name_the_keys(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_labels"] = 0  # the saved weights have a head, this model has none
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected keys \['head\.net"):
        load_pretrained(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vilalign checkpoint"):
        load_pretrained(tmp_path)

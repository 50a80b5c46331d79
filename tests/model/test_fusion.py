"""The fusion-layer contract: the registry, the config option, and a new layer type in two
steps (its class + its registration) that the model, collection and the analyses handle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vilalign.analysis.attention import attention_entropy, export_bertviz
from vilalign.analysis.attribution import explain
from vilalign.analysis.collect import collect
from vilalign.config import ConfigError, model_config
from vilalign.data.types import Batch
from vilalign.experiments.spec import load_experiment
from vilalign.model import (
    FUSION_LAYERS,
    FusionLayer,
    apply_baseline,
    build_model,
    load_pretrained,
    register_fusion_layer,
    save_pretrained,
)
from vilalign.model.attention import MultiHeadAttention
from vilalign.model.coattention import COATTENTION, SELF_ATTENTION, SINGLE_STREAM
from vilalign.model.fusion import (
    IMAGE,
    TEXT,
    declare_directions,
    direction_streams,
    unregister_fusion_layer,
)

TOY = "toy_glance"


class ToyGlanceLayer(FusionLayer):
    """A new fusion layer type: text queries glance at the image; the image passes through."""

    kind = TOY
    directions = declare_directions(text_glances_at_image=(TEXT, IMAGE))

    def __init__(self, text_dim: int, image_dim: int, heads: int) -> None:
        super().__init__()
        self.glance = MultiHeadAttention(text_dim, image_dim, text_dim, heads)
        self.norm = nn.LayerNorm(text_dim)

    @classmethod
    def from_config(cls, config, text_dim: int, image_dim: int) -> ToyGlanceLayer:
        return cls(text_dim, image_dim, config.num_heads)

    def forward(self, text, image, text_mask, need_weights=False):
        out, weights = self.glance(text, image, None, need_weights)
        attn = {"text_glances_at_image": weights} if need_weights else None
        return self.norm(text + out), image, attn


@pytest.fixture
def toy_kind():
    register_fusion_layer(ToyGlanceLayer)
    yield TOY
    unregister_fusion_layer(TOY)


def small(**overrides):
    base = {
        "text": {"num_layers": 1, "max_length": 10},
        "image": {"img_size": 32, "depth": 1},
        "num_labels": 2,
    }
    return model_config("tiny", **{**base, **overrides})


def batch(n: int = 3) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[:, 0] = 101
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros_like(ids),
        pixel_values=torch.randn(n, 3, 32, 32, generator=gen),
        ids=[f"s{i}" for i in range(n)],
    )


def test_the_config_names_the_registered_kinds():
    assert {COATTENTION, SELF_ATTENTION, SINGLE_STREAM} <= set(FUSION_LAYERS)
    for kind in (*small().layer_kinds, *small(variant="single_stream").layer_kinds):
        assert kind in FUSION_LAYERS
    assert small().layer_kinds == [SELF_ATTENTION, COATTENTION, SELF_ATTENTION, COATTENTION]


def test_a_model_is_built_from_the_registry_by_kind():
    torch.manual_seed(0)
    model = build_model(small(fusion_layers=[COATTENTION, SELF_ATTENTION]))
    assert [type(layer) for layer in model.fusion_layers] == [
        FUSION_LAYERS[COATTENTION],
        FUSION_LAYERS[SELF_ATTENTION],
    ]


def test_an_unknown_kind_or_a_kind_on_an_unfused_variant_is_an_error_naming_it(tmp_path):
    known = r"'mystery' is not registered \(known: .*coattention"
    with pytest.raises(ValueError, match=known):
        build_model(small(fusion_layers=["mystery"]))
    path = tmp_path / "exp.yaml"  # an experiment file fails when read, not mid-grid
    path.write_text("name: x\npreset: tiny\nmodel: {fusion_layers: [coattention, mystery]}\n")
    where = "exp.yaml, cell .*model.fusion_layers: fusion layer kind "
    with pytest.raises(ConfigError, match=where + known):
        load_experiment(path)
    with pytest.raises(ConfigError, match="variant 'text_only' has no fusion layers"):
        small(variant="text_only", fusion_layers=[COATTENTION])


def test_fusion_layers_set_the_depth_and_the_baselines_replace_them():
    cfg = small(fusion_layers=[COATTENTION, COATTENTION, SELF_ATTENTION])
    assert cfg.depth == 3 and cfg.layer_kinds == [COATTENTION, COATTENTION, SELF_ATTENTION]
    assert apply_baseline(cfg, "no_coattention").layer_kinds == [SELF_ATTENTION] * 3
    assert apply_baseline(cfg, "single_stream").layer_kinds == [SINGLE_STREAM] * 3
    assert apply_baseline(cfg, "text_only").layer_kinds == []
    assert apply_baseline(cfg, "random_text").layer_kinds == cfg.layer_kinds


def test_an_unset_fusion_layers_is_not_written(tmp_path):
    # Configs that do not use it dump (and hash) as before the option existed.
    assert "fusion_layers" not in small().model_dump()
    assert small(fusion_layers=[COATTENTION]).model_dump()["fusion_layers"] == [COATTENTION]


def test_a_direction_name_means_one_stream_pair():
    class Clash(ToyGlanceLayer):
        kind = "clash"
        directions = declare_directions(text_to_image=(IMAGE, TEXT))  # co-attention's name

    with pytest.raises(ValueError, match="another fusion layer type uses that name"):
        register_fusion_layer(Clash)
    assert "clash" not in FUSION_LAYERS
    with pytest.raises(ValueError, match="not a \\(query, key\\) pair"):
        register_fusion_layer(type("Bad", (ToyGlanceLayer,), {"kind": "bad", "directions": {
            "x": ("text", "sound")}}))  # fmt: skip


def test_a_new_layer_type_runs_through_model_collection_and_analyses(toy_kind, tmp_path):
    torch.manual_seed(0)
    cfg = small(fusion_layers=[toy_kind, COATTENTION])
    model = build_model(cfg).eval()
    b = batch()
    with torch.no_grad():
        out = model(b.input_ids, b.attention_mask, b.pixel_values, output_attentions=True)
    assert out.layer_kinds == [toy_kind, COATTENTION]
    assert out.attentions[0]["text_glances_at_image"].shape == (3, 4, 10, 17)
    assert direction_streams("text_glances_at_image") == (TEXT, IMAGE)

    reps = collect(model, [b], num_samples=3, progress=False)
    assert [info.kind for info in reps.fusion_layers] == [toy_kind, COATTENTION]
    assert reps.get("fusion.0", TEXT, "cls").shape == (3, 128)

    df = attention_entropy(model, [b])
    toy = df[df["layer_kind"] == toy_kind]
    assert set(toy["direction"]) == {"text_glances_at_image"}
    assert (toy["query_stream"] == TEXT).all() and (toy["n_keys"] == 17).all()
    assert toy["normalized_entropy"].between(0, 1 + 1e-9).all()

    relevancy = explain(model, b, method="relevancy")
    assert relevancy[1].token_scores.shape == (6,)  # sample 1 has 6 real tokens
    export_bertviz(model, b, tmp_path / "toy.html", inline_js=None)

    save_pretrained(model, tmp_path / "ckpt")  # its config names the kind; it loads back
    again = load_pretrained(tmp_path / "ckpt").eval()
    inputs = (b.input_ids, b.attention_mask, b.pixel_values)
    with torch.no_grad():
        assert torch.equal(again(*inputs).logits, model(*inputs).logits)

"""Every adapter against its model: layers, states, attention, padding, the alignment table.

The tiny models are saved to a folder and loaded back through ``load_hf_model``, the path a
user's hub name takes; "the model's own" numbers come from calling the ``transformers``
model directly on its processor's output, not through the adapter.
"""

from __future__ import annotations

import pytest
import torch

from tests.adapters import tiny
from tests.adapters.conftest import make_samples
from vilalign.adapters import AdapterError
from vilalign.adapters.base import depth_pairs
from vilalign.analysis.collect import collect

NAMES = list(tiny.BUILDERS)
PIXEL_MODELS = ("bridgetower", "vilt", "clip", "siglip")
ATOL = 1e-6
PADDING_SIZES = [(64, 64), (40, 80), (40, 40), (64, 48), (64, 64), (56, 40)]


def batch_of(adapter, samples, padding="longest"):
    return adapter.collator(adapter.max_text_length, padding)(samples)


def own_inputs(name, adapter, samples, region_file):
    """What a user would hand the model: the processor's (or tokenizer's) own output."""
    texts = [s.text for s in samples]
    if name in PIXEL_MODELS:
        kwargs = (
            {"padding": "max_length", "max_length": 16, "truncation": True}
            if name == "siglip"
            else {"padding": True}
        )
        enc = dict(
            adapter.processor(
                images=[s.image for s in samples], text=texts, return_tensors="pt", **kwargs
            )
        )
        return {k: v for k, v in enc.items() if not (name == "siglip" and k == "attention_mask")}
    import numpy as np

    enc = dict(adapter.tokenizer(texts, padding=True, return_tensors="pt"))
    with np.load(region_file) as f:
        rows = [list(f["ids"]).index(s.id) for s in samples]
        counts = f["num_boxes"][rows]
        r = int(counts.max())
        feats = torch.from_numpy(f["features"][rows, :r])
        boxes = torch.from_numpy(f["boxes"][rows, :r])
    mask = (torch.arange(r)[None] < torch.as_tensor(counts)[:, None]).long()
    if name == "lxmert":
        return {**enc, "visual_feats": feats, "visual_pos": boxes, "visual_attention_mask": mask}
    return {**enc, "visual_embeds": feats, "visual_attention_mask": mask}


def own_states(name, model, inputs):
    """The model's own output_hidden_states, under the names the adapter documents."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # ViLT draws its patch order; the adapter runs under seed 0
        out = model(**inputs, output_hidden_states=True)
    T = inputs["input_ids"].shape[1]
    states = {}
    if name == "bridgetower":
        text, image, cross = out.hidden_states
        states |= {(f"text_encoder.{i}", "text"): h for i, h in enumerate(text[1:])}
        states |= {
            (f"image_encoder.{i}", "image"): h.permute(1, 0, 2) for i, h in enumerate(image[1:])
        }
        for k, (t, v) in enumerate(cross):
            states |= {(f"fusion.{k}", "text"): t, (f"fusion.{k}", "image"): v}
    elif name in ("vilt", "visual_bert"):
        for k, h in enumerate(out.hidden_states[1:]):
            states |= {(f"fusion.{k}", "text"): h[:, :T], (f"fusion.{k}", "image"): h[:, T:]}
    elif name in ("clip", "siglip"):
        text, image = (
            out.text_model_output.hidden_states[1:],
            out.vision_model_output.hidden_states[1:],
        )
        for k, (a, b) in enumerate(depth_pairs(len(text), len(image))):
            states |= {(f"encoder.{k}", "text"): text[a], (f"encoder.{k}", "image"): image[b]}
    else:  # lxmert
        c = model.config
        lang, vis = out.language_hidden_states, out.vision_hidden_states
        states |= {(f"text_encoder.{i}", "text"): lang[i] for i in range(c.l_layers)}
        states |= {(f"image_encoder.{j}", "image"): vis[j] for j in range(c.r_layers)}
        for k in range(c.x_layers):
            states |= {
                (f"fusion.{k}", "text"): lang[c.l_layers + k],
                (f"fusion.{k}", "image"): vis[c.r_layers + k],
            }
    return states, out


@pytest.mark.parametrize("name", NAMES)
def test_layers_and_shapes_follow_the_config(name, adapters, samples):
    adapter = adapters[name]
    c = adapter.model.config
    infos = adapter.layer_infos(include_encoders=True)
    by_kind = {}
    for info in infos:
        by_kind.setdefault(info.kind, []).append(info.name)
    expected = {
        "bridgetower": lambda: {
            "encoder": c.text_config.num_hidden_layers + c.vision_config.num_hidden_layers,
            "coattention": c.num_hidden_layers,
        },
        "vilt": lambda: {"single_stream": c.num_hidden_layers},
        "clip": lambda: {
            "encoder": max(c.text_config.num_hidden_layers, c.vision_config.num_hidden_layers)
        },
        "siglip": lambda: {"encoder": c.text_config.num_hidden_layers},
        "lxmert": lambda: {"encoder": c.l_layers + c.r_layers, "coattention": c.x_layers},
        "visual_bert": lambda: {"single_stream": c.num_hidden_layers},
    }[name]()
    assert {k: len(v) for k, v in by_kind.items()} == expected
    batch = batch_of(adapter, samples[:3])
    with torch.no_grad():
        states, masks = adapter.layer_states(batch)
    assert set(states) == {(i.name, s) for i in infos for s in i.streams}
    B, T = batch.input_ids.shape
    image_tokens = {"bridgetower": 1 + (tiny.IMAGE // tiny.PATCH) ** 2, "clip": 17, "siglip": 16}
    for (layer, stream), h in states.items():
        assert h.shape[0] == B and h.ndim == 3
        if stream == "text":
            assert h.shape[1] == T
        elif name in image_tokens:
            assert h.shape[1] == image_tokens[name], (layer, h.shape)
        elif name in ("lxmert", "visual_bert"):
            assert h.shape[1] == masks.image.shape[1] == tiny.REGIONS
    if name == "bridgetower":  # encoders keep their own widths; the cross layers theirs
        assert states[("image_encoder.0", "image")].shape[-1] == c.vision_config.hidden_size
        assert states[("fusion.0", "image")].shape[-1] == c.hidden_size


@pytest.mark.parametrize("name", NAMES)
def test_states_equal_the_models_own_hidden_states(name, adapters, samples, region_file):
    adapter = adapters[name]
    inputs = own_inputs(name, adapter, samples[:4], region_file)
    expected, out = own_states(name, adapter.model, inputs)
    batch = batch_of(adapter, samples[:4])
    with torch.no_grad():
        states, _ = adapter.layer_states(batch)
    assert set(states) >= set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(states[key], value, atol=ATOL, rtol=0, msg=str(key))
    # and the deepest layer is the model's final output (not read from hidden states)
    last = [i.name for i in adapter.layer_infos(False)][-1]
    final = {
        "bridgetower": lambda: (out.text_features, out.image_features),
        "vilt": lambda: (out.last_hidden_state[:, : batch.input_ids.shape[1]], None),
        "visual_bert": lambda: (out.last_hidden_state[:, : batch.input_ids.shape[1]], None),
        "lxmert": lambda: (out.language_output, out.vision_output),
        "clip": lambda: (None, None),
        "siglip": lambda: (None, None),
    }[name]()
    # ViLT's last layer is followed by a final layer norm, as its output shows
    norm = adapter.model.layernorm if name == "vilt" else (lambda x: x)
    for stream, value in zip(("text", "image"), final, strict=True):
        if value is not None:
            with torch.no_grad():
                torch.testing.assert_close(norm(states[(last, stream)]), value, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_tower_states_lead_to_the_towers_outputs(name, adapters, samples):
    """The towers' last states, through the model's own final norms, are its outputs."""
    adapter = adapters[name]
    batch = batch_of(adapter, samples[:3])
    with torch.no_grad():
        states, masks = adapter.layer_states(batch)
        out = adapter(batch)
        text_model, vision_model = adapter.model.text_model, adapter.model.vision_model
        last = adapter.layer_infos(False)[-1].name
        text = text_model.final_layer_norm(states[(last, "text")])
        torch.testing.assert_close(text, out.text_model_output.last_hidden_state, atol=ATOL, rtol=0)
        # the summary token is the one the text tower pools
        pooled = text[torch.arange(len(text)), masks.summary["text"]]
        if name == "clip":  # CLIPModel's outputs hold the projected pooled states
            m = adapter.model
            own = out.text_model_output.pooler_output
            torch.testing.assert_close(m.text_projection(pooled), own, atol=ATOL, rtol=0)
            image = m.visual_projection(vision_model.post_layernorm(states[(last, "image")][:, 0]))
            torch.testing.assert_close(
                image, out.vision_model_output.pooler_output, atol=ATOL, rtol=0
            )
        else:
            pooled_out = text_model.head(pooled)
            torch.testing.assert_close(
                pooled_out, out.text_model_output.pooler_output, atol=ATOL, rtol=0
            )


def real_keys(direction, maps, n_text):
    text = maps.text_mask.bool()
    image = maps.image_mask.bool() if maps.image_mask is not None else None
    if direction == "joint":
        image = image if image is not None else torch.ones(len(text), 0, dtype=torch.bool)
        return text, torch.cat([text, image], dim=1) if image.shape[1] else None
    from vilalign.model.fusion import direction_streams

    q, k = direction_streams(direction)
    return (text if q == "text" else image), (text if k == "text" else image)


@pytest.mark.parametrize("name", NAMES)
def test_attention_maps_sum_to_one_over_real_keys(name, adapters, samples):
    adapter = adapters[name]
    batch = batch_of(adapter, samples[:4])
    with torch.no_grad():
        maps = adapter.attention_maps(batch)
    assert len(maps.layers) == len(adapter.layer_infos(False)) == len(maps.is_coattention)
    H = adapter.text_config.num_attention_heads
    for layer in maps.layers:
        for direction, w in layer.items():
            if direction == "joint":  # the weights span text tokens then every image token
                image = (
                    maps.image_mask
                    if maps.image_mask is not None
                    else torch.ones(len(w), w.shape[-1] - maps.text_mask.shape[1], dtype=torch.long)
                )
                keys = torch.cat([maps.text_mask, image], dim=1).bool()
            else:
                _, keys = real_keys(direction, maps, maps.text_mask.shape[1])
            assert w.shape[1] == H or name == "clip", (direction, w.shape)
            on_real = w if keys is None else w * keys[:, None, None, :]
            torch.testing.assert_close(
                on_real.sum(-1), torch.ones_like(w[..., 0]), atol=1e-5, rtol=0
            )
    kinds = {d for layer in maps.layers for d in layer}
    assert (
        kinds
        == {
            "bridgetower": {"text_self", "image_self", "text_to_image", "image_to_text"},
            "lxmert": {"text_self", "image_self", "text_to_image", "image_to_text"},
            "vilt": {"joint"},
            "visual_bert": {"joint"},
            "clip": {"text_self", "image_self"},
            "siglip": {"text_self", "image_self"},
        }[name]
    )


def test_lxmert_cross_weights_are_the_models_own(adapters, samples, region_file):
    """The hooks read what LXMERT itself returns where it returns anything."""
    adapter = adapters["lxmert"]
    batch = batch_of(adapter, samples[:3])
    with torch.no_grad():
        maps = adapter.attention_maps(batch)
        out = adapter(batch, output_attentions=True)
    for k, own in enumerate(out.cross_encoder_attentions):  # text queries, region keys
        torch.testing.assert_close(maps.layers[k]["text_to_image"], own, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_real_tokens(name, adapters):
    adapter = adapters[name]
    # s2 has a short text, a square image and 3 regions; s1 a long text, a wide image
    # (ViLT keeps aspect ratios, so its patches are padded) and 5 regions
    samples = make_samples(PADDING_SIZES)
    alone = batch_of(adapter, [samples[2]])
    padded = batch_of(adapter, [samples[2], samples[1]])
    assert padded.attention_mask[0].sum() < padded.attention_mask.shape[1] or name == "siglip"
    with torch.no_grad():
        (s1, _), (s2, m2) = adapter.layer_states(alone), adapter.layer_states(padded)
    T = int(alone.attention_mask[0].sum())
    if name in ("vilt", "lxmert", "visual_bert"):
        assert not bool(m2.image[0].all())  # the image stream really was padded
    for key, value in s1.items():
        stream = key[1]
        other = s2[key][:1]
        if stream == "text":
            torch.testing.assert_close(other[:, :T], value[:, :T], atol=1e-5, rtol=0, msg=str(key))
            continue
        n = value.shape[1]
        if name == "vilt":  # ViLT draws patch order anew: compare CLS and the real-patch mean
            real = m2.image[0].bool()
            torch.testing.assert_close(other[0, 0], value[0, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                other[0, real][1:].mean(0), value[0, 1:].mean(0), atol=1e-5, rtol=0
            )
        else:
            torch.testing.assert_close(other[:, :n], value, atol=1e-5, rtol=0, msg=str(key))


def test_collection_pools_real_tokens_and_the_summary_token(adapters, samples):
    """cls reads the token the model pools; mean skips padded image tokens."""
    adapter = adapters["clip"]
    batch = batch_of(adapter, samples[:3])
    reps = collect(adapter, [batch], 3, ("cls", "mean"), progress=False)
    with torch.no_grad():
        states, masks = adapter.layer_states(batch)
    layer = reps.fusion_layers[-1].name
    eos = masks.summary["text"]
    assert (eos == batch.attention_mask.sum(1) - 1).all()  # the end-of-text token
    text = states[(layer, "text")]
    torch.testing.assert_close(reps.get(layer, "text", "cls"), text[torch.arange(3), eos])
    vilt = adapters["vilt"]
    batch = batch_of(vilt, make_samples(PADDING_SIZES)[1:3])
    reps = collect(vilt, [batch], 2, ("mean",), progress=False)
    with torch.no_grad():
        states, masks = vilt.layer_states(batch)
    image, real = states[("fusion.1", "image")][1], masks.image[1].bool()
    assert not real.all()
    torch.testing.assert_close(reps.get("fusion.1", "image", "mean")[1], image[real][1:].mean(0))


def test_views_a_model_cannot_give_are_refused(adapters, samples):
    siglip = adapters["siglip"]
    assert siglip.default_views == ("mean",)
    with pytest.raises(AdapterError, match=r"no image summary token.*--views mean"):
        collect(siglip, [batch_of(siglip, samples[:2])], 2, ("cls", "mean"), progress=False)
    vilt = adapters["vilt"]  # images of two sizes: padded patches have no token-view row
    batch = batch_of(vilt, samples[:2], padding="max_length")
    with pytest.raises(ValueError, match=r"token view: fusion\.0 has padded image tokens"):
        collect(vilt, [batch], 2, ("tokens",), progress=False)


def test_token_view_of_a_fixed_size_model(adapters, samples):
    adapter = adapters["bridgetower"]
    collator = adapter.collator(24, "max_length")
    reps = collect(
        adapter, [collator(samples[:3]), collator(samples[3:])], 6, ("tokens",), progress=False
    )
    tokens = reps.get("fusion.1", "image", "tokens")
    assert tokens.shape == (6, (tiny.IMAGE // tiny.PATCH) ** 2, adapter.model.config.hidden_size)
    assert reps.text_mask.shape == (6, 24)


def test_depth_pairs_meet_at_the_top():
    assert depth_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert depth_pairs(12, 24) == [(k, 2 * k + 1) for k in range(12)]
    assert depth_pairs(24, 12)[-1] == (23, 11)
    pairs = depth_pairs(12, 18)
    assert pairs[-1] == (11, 17) and len({b for _, b in pairs}) == 12


def test_towers_of_different_depths_list_every_layer_once(adapters):
    infos = adapters["clip"].layer_infos(include_encoders=True)  # 2 text, 3 image layers
    assert [i.name for i in infos] == ["image_encoder.0", "encoder.0", "encoder.1"]
    paired = adapters["clip"].layer_infos(include_encoders=False)
    assert [i.name for i in paired] == ["encoder.0", "encoder.1"]
    assert all(i.kind == "encoder" for i in infos)


def test_at_init_is_the_same_model_with_fresh_seeded_weights(adapters):
    adapter = adapters["vilt"]
    a, b, c = adapter.at_init(3), adapter.at_init(3), adapter.at_init(4)
    assert a.processor is adapter.processor and type(a) is type(adapter)
    assert a.model.config.to_dict() == adapter.model.config.to_dict()
    assert [i.name for i in a.layer_infos(True)] == [i.name for i in adapter.layer_infos(True)]
    w = lambda m: m.model.encoder.layer[0].attention.attention.query.weight  # noqa: E731
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert not torch.equal(w(a), w(adapter))
    assert a.name.endswith("@init3")
    region = adapters["lxmert"].at_init(0)
    assert region.regions is adapters["lxmert"].regions


def test_collection_reads_no_batch_past_the_samples_asked(adapters, samples):
    """A loader past N is never asked for another batch (a region file may not hold it)."""
    adapter = adapters["visual_bert"]
    served = []

    def batches():
        for start in range(0, 6, 2):
            served.append(start)
            yield adapter.encode(samples[start : start + 2])

    reps = collect(adapter, batches(), 4, ("mean",), progress=False)
    assert reps.ids == ["s0", "s1", "s2", "s3"] and served == [0, 2]

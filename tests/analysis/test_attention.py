"""Attention entropy, the co- vs self-attention focus test, and the bertviz export."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from vilalign.analysis.attention import (
    attention_entropy,
    bertviz_html,
    compare_by_layer,
    compare_coattention_focus,
    entropy_frame,
    export_bertviz,
    head_entropy,
    joint_attention,
    patch_labels,
    query_entropy,
)
from vilalign.config import model_config
from vilalign.model import build_model, load_tokenizer
from vilalign.model.attention import MultiHeadAttention
from vilalign.model.baselines import apply_baseline


@pytest.fixture(scope="module")
def tiny(one_thread):
    cfg = model_config("tiny", num_labels=2)
    torch.manual_seed(0)
    return build_model(cfg).eval(), load_tokenizer(cfg.text)


def encode(tokenizer, texts, length, seed=1):
    enc = tokenizer(texts, padding="max_length", max_length=length, return_tensors="pt")
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(texts), 3, 64, 64, generator=g)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": pixels,
    }


TEXTS = ["a red square on the left", "is there a circle?"]

# --------------------------------------------------------------------------- entropy


def test_uniform_attention_has_entropy_log_n_and_normalised_one():
    n = 7
    w = torch.full((2, 3, 5, n), 1.0 / n)
    assert torch.allclose(query_entropy(w), torch.full((2, 3, 5), math.log(n), dtype=torch.float64))
    _, norm = head_entropy(w)
    assert torch.allclose(norm, torch.ones(2, 3, dtype=torch.float64))


def test_one_hot_attention_has_zero_entropy():
    w = torch.zeros(1, 2, 4, 6)
    w[..., 3] = 1.0
    raw, norm = head_entropy(w)
    assert torch.equal(raw, torch.zeros(1, 2, dtype=torch.float64))
    assert torch.equal(norm, torch.zeros(1, 2, dtype=torch.float64))


def test_masked_keys_and_queries_are_excluded():
    # 4 real keys of 6, uniform over the real ones; padded queries attend anywhere.
    w = torch.zeros(1, 1, 6, 6)
    w[..., :4] = 0.25
    w[..., 4:, :] = torch.softmax(torch.randn(2, 6), -1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    raw, norm = head_entropy(w, key_mask=mask, query_mask=mask)
    assert raw.item() == pytest.approx(math.log(4))
    assert norm.item() == pytest.approx(1.0)


def test_weight_on_masked_keys_is_dropped_and_renormalised():
    w = torch.tensor([[[[0.25, 0.25, 0.5]]]])  # half the mass on a padded key
    raw, _ = head_entropy(w, key_mask=torch.tensor([[1, 1, 0]]))
    assert raw.item() == pytest.approx(math.log(2))


def test_padding_does_not_change_model_entropies(tiny):
    model, tok = tiny
    short = encode(tok, TEXTS, 12)
    long = encode(tok, TEXTS, 24)
    frames = []
    for batch in (short, long):
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
        frames.append(entropy_frame(out.attentions, out.is_coattention, out.attention_mask))
    a, b = frames
    assert a[["layer", "direction", "head", "n_keys"]].equals(
        b[["layer", "direction", "head", "n_keys"]]
    )
    np.testing.assert_allclose(a["entropy"], b["entropy"], atol=1e-5)
    np.testing.assert_allclose(a["normalized_entropy"], b["normalized_entropy"], atol=1e-5)


def test_coattention_is_normalised_by_the_other_streams_key_count(tiny):
    model, tok = tiny
    df = attention_entropy(model, [encode(tok, TEXTS, 16)])
    n_real = [len(tok(t)["input_ids"]) for t in TEXTS]
    real = {str(i): n for i, n in enumerate(n_real)}
    for direction, expected in (
        ("text_to_image", lambda i: 65),
        ("image_to_text", real.get),
        ("text_self", real.get),
        ("image_self", lambda i: 65),
    ):
        rows = df[df["direction"] == direction]
        assert (rows["n_keys"] == rows["id"].map(expected)).all(), direction
        np.testing.assert_allclose(
            rows["normalized_entropy"], rows["entropy"] / np.log(rows["n_keys"])
        )


def test_attention_entropy_keeps_per_sample_rows_and_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        batch = encode(tok, TEXTS, 16) | {"ids": ["a", "b"]}
        df = attention_entropy(model, [batch, batch], max_batches=1)
        assert model.training
    finally:
        model.eval()
    # 2 samples × (2 self layers × 2 directions + 2 co layers × 2 directions) × 4 heads
    assert len(df) == 2 * 8 * 4
    assert set(df["id"]) == {"a", "b"}
    assert set(df["layer_kind"]) == {"self_attention", "coattention"}
    assert set(df.loc[df["layer_kind"] == "coattention", "layer"]) == {1, 3}
    assert df["normalized_entropy"].between(0, 1 + 1e-9).all()


def test_single_stream_joint_attention_is_split_by_query_stream(tiny, tmp_path):
    # The single_stream baseline's layers return one joint (text + image) attention.
    _, tok = tiny
    cfg = apply_baseline(model_config("tiny", num_labels=2), "single_stream")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    df = attention_entropy(model, [encode(tok, TEXTS, 16)])
    assert set(df["direction"]) == {"text_joint", "image_joint"}
    assert set(df["layer_kind"]) == {"single_stream"}
    n_real = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert (df["n_keys"] == df["id"].map({"0": n_real[0] + 65, "1": n_real[1] + 65})).all()
    assert df["normalized_entropy"].between(0, 1 + 1e-9).all()
    page = export_bertviz(model, encode(tok, TEXTS, 16), tmp_path / "s.html", tok, inline_js=None)
    attn = np.array(_params(page.read_text())["attention"][0]["attn"])
    assert attn.shape == (4, 4, n_real[0] + 65, n_real[0] + 65)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=2e-3)  # padding cut, rows still sum to 1


def test_a_model_without_fusion_layers_is_a_clear_error(tiny):
    _, tok = tiny
    cfg = apply_baseline(model_config("tiny", num_labels=2), "concat_features")
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="no fusion layers"):
        attention_entropy(model, [encode(tok, TEXTS, 16)])


def test_eval_mode_weights_are_deterministic_despite_attention_dropout(tiny):
    model, tok = tiny
    model.train()
    try:
        batch = encode(tok, TEXTS, 16)
        a = attention_entropy(model, [batch])
        b = attention_entropy(model, [batch])
    finally:
        model.eval()
    np.testing.assert_array_equal(a["entropy"], b["entropy"])


def test_the_weights_analysed_are_the_weights_the_fused_path_uses(tiny):
    """Every attention module, rerun on its captured inputs: explicit weights @ V == SDPA."""
    model, tok = tiny
    captured = []

    def hook(module, args, output):
        captured.append((module, args, output))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MultiHeadAttention)
    ]
    try:
        with torch.no_grad():
            out = model(**encode(tok, TEXTS, 16), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == 8
    returned = [w for layer in out.attentions for w in layer.values()]
    with torch.no_grad():
        for module, (queries, keys, key_mask, _), (explicit, weights) in captured:
            fused, none = module(queries, keys, key_mask, need_weights=False)
            assert none is None
            torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
            v = module._heads(module.value(keys))  # (B, H, Tk, Dh)
            ctx = (weights @ v).transpose(1, 2).flatten(2)  # (B, Tq, H*Dh)
            torch.testing.assert_close(module.out(ctx), fused, atol=1e-5, rtol=1e-5)
            assert any(w is weights for w in returned)


# --------------------------------------------------------------------------- statistics


def synthetic_attentions(rng, n_samples=6, heads=4, co_sharpness=1.0, self_sharpness=1.0):
    """Fusion layers [self, co, self, co] with softmax(sharpness·z) heads, z ~ N(0, 1).

    Each head gets its own sharpness around the group's (heads differ), so head means vary.
    """
    T, I = 10, 17

    def heads_(q, k, sharp):
        s = sharp * rng.uniform(0.7, 1.3, size=(1, heads, 1, 1))
        z = rng.standard_normal((n_samples, heads, q, k)) * s
        return torch.softmax(torch.as_tensor(z), -1)

    layers, kinds = [], []
    for coattn in (False, True, False, True):
        if coattn:
            layers.append(
                {
                    "text_to_image": heads_(T, I, co_sharpness),
                    "image_to_text": heads_(I, T, co_sharpness),
                }
            )
        else:
            layers.append(
                {
                    "text_self": heads_(T, T, self_sharpness),
                    "image_self": heads_(I, I, self_sharpness),
                }
            )
        kinds.append(coattn)
    mask = torch.ones(n_samples, T, dtype=torch.long)
    return entropy_frame(layers, kinds, mask)


def test_a_known_difference_is_detected():
    rng = np.random.default_rng(0)
    df = synthetic_attentions(rng, co_sharpness=3.0, self_sharpness=1.0)
    result = compare_coattention_focus(df, n_resamples=999)
    assert result.significant
    assert result.delta < 0 and result.ci_high < 0
    assert result.prob_lower > 0.9
    per_layer = compare_by_layer(df, n_resamples=999)
    assert list(per_layer["layer"].fillna(-1)) == [-1, 1, 3]
    assert per_layer["significant"].all()


def test_no_difference_is_rarely_detected():
    rng = np.random.default_rng(1)
    rejections = sum(
        compare_coattention_focus(synthetic_attentions(rng), n_resamples=999, seed=i).significant
        for i in range(100)
    )
    assert rejections <= 10  # α = 0.05: about 5 of 100 expected


def test_summary_reports_words_and_numbers():
    rng = np.random.default_rng(2)
    df = synthetic_attentions(rng, co_sharpness=3.0)
    text = compare_coattention_focus(
        df, layer=3, n_resamples=999, value="normalized_entropy"
    ).summary()
    assert text.startswith("co-attention heads in layer 3 have lower normalized entropy")
    assert re.search(r"Δ = -\d\.\d{3} \[95% CI -\d\.\d{3}, -\d\.\d{3}\]", text)
    assert "Mann–Whitney U =" in text and "permutation p =" in text
    null = compare_coattention_focus(synthetic_attentions(rng), n_resamples=999)
    assert "do not have detectably lower" in null.summary() or null.significant


def test_query_stream_compares_like_with_like():
    rng = np.random.default_rng(3)
    df = synthetic_attentions(rng, co_sharpness=3.0)
    result = compare_coattention_focus(df, query_stream="text", n_resamples=999)
    assert (result.n_coattention, result.n_self) == (8, 8)


def test_too_few_heads_is_an_error():
    rng = np.random.default_rng(4)
    df = synthetic_attentions(rng, heads=1)
    with pytest.raises(ValueError, match="≥ 2 heads"):
        compare_coattention_focus(df, layer=1, query_stream="text")


# --------------------------------------------------------------------------- bertviz


def test_patch_labels_follow_the_row_major_grid():
    assert patch_labels((2, 3)) == [
        "[IMG]",
        "p(0,0)",
        "p(0,1)",
        "p(0,2)",
        "p(1,0)",
        "p(1,1)",
        "p(1,2)",
    ]


def test_joint_matrix_puts_each_direction_in_its_block():
    ti, it = torch.rand(2, 3, 5), torch.rand(2, 5, 3)
    joint = joint_attention({"text_to_image": ti, "image_to_text": it}, n_text=3)
    assert joint.shape == (1, 2, 8, 8)
    torch.testing.assert_close(joint[0, :, :3, 3:], ti.double().round(decimals=4))
    torch.testing.assert_close(joint[0, :, 3:, :3], it.double().round(decimals=4))
    assert joint[0, :, :3, :3].abs().sum() == 0 and joint[0, :, 3:, 3:].abs().sum() == 0


def _params(page: str) -> dict:
    return json.loads(re.search(r"const params = (\{.*?\});", page, re.S).group(1))


def test_bertviz_export_has_every_layer_both_directions_and_patch_labels(tiny, tmp_path):
    model, tok = tiny
    batch = encode(tok, TEXTS, 16)
    path = export_bertviz(model, batch, tmp_path / "view.html", tok, index=1, inline_js=None)
    page = path.read_text()
    params = _params(page)
    names = [a["name"] for a in params["attention"]]
    assert names == ["All", "text → text", "image → image", "text → image", "image → text"]
    tokens = params["attention"][0]["left_text"]
    n_text = len(tok(TEXTS[1])["input_ids"])
    assert tokens[:3] == ["[CLS]", "is", "there"] and tokens[n_text] == "[IMG]"
    assert tokens[n_text + 1] == "p(0,0)" and tokens[-1] == "p(7,7)"
    assert params["include_layers"] == [0, 1, 2, 3]
    attn = np.array(params["attention"][0]["attn"])  # (layers, heads, N, N)
    assert attn.shape == (4, 4, n_text + 65, n_text + 65)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=2e-3)  # every row a distribution
    ti = np.array(params["attention"][3]["attn"])  # text → image block
    assert ti[[0, 2]].sum() == 0 and ti[[1, 3]].sum() > 0  # co-attention only in 1 and 3


def test_bertviz_export_subset_of_layers_and_model_view(tiny, tmp_path):
    model, tok = tiny
    batch = encode(tok, TEXTS, 16)
    path = export_bertviz(
        model, batch, tmp_path / "m.html", tok, view="model", layers=[1, 3], inline_js=None
    )
    assert _params(path.read_text())["include_layers"] == [1, 3]
    head = export_bertviz(model, batch, tmp_path / "h.html", tok, layer=3, inline_js=None)
    assert _params(head.read_text())["layer"] == 3  # opens on a co-attention layer
    with pytest.raises(ValueError, match="unknown bertviz view"):
        export_bertviz(model, batch, tmp_path / "x.html", tok, view="neuron", inline_js=None)


def test_inlined_javascript_replaces_the_cdn_loader(tmp_path):
    js = {"d3": tmp_path / "d3.js", "jquery": tmp_path / "jq.js"}
    js["d3"].write_text("window.d3 = {marker: 'D3'};")
    js["jquery"].write_text("window.jQuery = {marker: 'JQ'};")
    attn = [
        {"text_self": torch.full((1, 2, 3, 3), 1 / 3), "image_self": torch.full((1, 2, 5, 5), 0.2)}
    ]
    page = bertviz_html(attn, ["[CLS]", "hi", "[SEP]"], (2, 2), inline_js=js)
    assert "require.min.js" not in page and "cdnjs" not in page.split("require.config")[0]
    assert "marker: 'D3'" in page and "marker: 'JQ'" in page and "function requirejs" in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_bertviz_export_opens_in_headless_chromium(tiny, tmp_path):
    from vilalign.analysis.attention import local_js_assets

    if local_js_assets() is None:
        pytest.skip("libjs-d3 / libjs-jquery not installed")
    model, tok = tiny
    path = export_bertviz(model, encode(tok, TEXTS, 16), tmp_path / "v.html", tok)
    shot = tmp_path / "v.png"
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        path.as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file()
    errors = [line for line in run.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors

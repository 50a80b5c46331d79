"""Attribution: Chefer et al.'s relevancy rules, Grad-CAM, integrated gradients, outputs, and
the sanity check on a model trained on a task that depends on one quadrant and one word."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vilalign.analysis.attribution import (
    explain,
    head_mean_relevance,
    normalise_self_relevance,
    propagate_relevancy,
    quadrant_mask,
    save_explanations,
)
from vilalign.analysis.visualize import tokens_html
from vilalign.config import model_config
from vilalign.model import build_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny(one_thread):
    cfg = model_config("tiny", num_labels=3)
    torch.manual_seed(0)
    return build_model(cfg).eval(), load_tokenizer(cfg.text)


@pytest.fixture(scope="module")
def batch(tiny):
    _, tok = tiny
    enc = tok(
        ["a red square", "is there a circle <b>here</b>?"],
        padding="max_length",
        max_length=16,
        return_tensors="pt",
    )
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": torch.randn(2, 3, 64, 64, generator=g),
        "ids": ["s/0", "s 1"],
    }


# --------------------------------------------------------------------------- the rules


def test_head_mean_keeps_only_positive_gradient_times_attention():
    a = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])  # (H=2, Q=1, K=2)
    g = torch.tensor([[[2.0, -2.0]], [[1.0, 5.0]]])
    assert torch.equal(head_mean_relevance(a, g), torch.tensor([[1.0, 0.0]]))


def test_normalised_self_relevance_rows_sum_to_one_off_the_identity():
    eye = torch.eye(3)
    assert torch.equal(normalise_self_relevance(eye), eye)  # nothing yet: stays I, no NaN
    r = eye + torch.tensor([[0.0, 2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    bar = normalise_self_relevance(r)
    torch.testing.assert_close((bar - eye).sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(bar[0], torch.tensor([1.0, 0.5, 0.5]))


def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_propagation_follows_the_formulas_layer_by_layer():
    T, I, H = 3, 4, 2
    self_layer = {"text_self": _rand(H, T, T, seed=1), "image_self": _rand(H, I, I, seed=2)}
    co_layer = {"text_to_image": _rand(H, T, I, seed=3), "image_to_text": _rand(H, I, T, seed=4)}
    grads = [
        {k: _rand(*v.shape, seed=10 + i) - 0.3 for i, (k, v) in enumerate(layer.items())}
        for layer in (self_layer, co_layer)
    ]
    R = propagate_relevancy([self_layer, co_layer], grads, [False, True])

    def bar_(a, g):
        return (a * g).clamp(min=0).mean(0)

    def norm(r):
        e = torch.eye(r.shape[0])
        return (r - e) / (r - e).sum(-1, keepdim=True) + e

    # self-attention layer from R_tt = I, R_ii = I, cross terms 0
    a_tt, a_ii = (
        bar_(self_layer["text_self"], grads[0]["text_self"]),
        bar_(self_layer["image_self"], grads[0]["image_self"]),
    )
    r_tt, r_ii = torch.eye(T) + a_tt, torch.eye(I) + a_ii
    r_ti, r_it = torch.zeros(T, I), torch.zeros(I, T)
    # co-attention layer, both directions from the pre-update matrices
    a_ti = bar_(co_layer["text_to_image"], grads[1]["text_to_image"])
    a_it = bar_(co_layer["image_to_text"], grads[1]["image_to_text"])
    expected = {
        "ti": r_ti + norm(r_tt).T @ a_ti @ norm(r_ii),
        "tt": r_tt + a_ti @ r_it,
        "it": r_it + norm(r_ii).T @ a_it @ norm(r_tt),
        "ii": r_ii + a_it @ r_ti,
    }
    for key, value in expected.items():
        torch.testing.assert_close(R[key], value, msg=key)


def test_self_attention_rule_moves_cross_relevance_too():
    T, I = 2, 3
    co = {
        "text_to_image": torch.full((1, T, I), 1 / I),
        "image_to_text": torch.full((1, I, T), 0.5),
    }
    self_ = {"text_self": torch.full((1, T, T), 0.5), "image_self": torch.full((1, I, I), 1 / I)}
    ones = [{k: torch.ones_like(v) for k, v in layer.items()} for layer in (co, self_)]
    R = propagate_relevancy([co, self_], ones, [True, False])
    ti_after_co = torch.full((T, I), 1 / I)  # R̄_tt = I, R̄_ii = I at the first layer
    torch.testing.assert_close(R["ti"], ti_after_co + torch.full((T, T), 0.5) @ ti_after_co)


def test_joint_maps_take_the_self_attention_rule_on_the_whole_sequence():
    # Single-stream layers: Chefer et al.'s rule R += Ā R on the concatenated text + image
    # sequence, computed here on the full matrix; the library applies it block by block.
    T, I, H = 3, 5, 2
    maps = [{"joint": torch.softmax(_rand(H, T + I, T + I, seed=s) * 4, -1)} for s in (1, 2)]
    grads = [{"joint": _rand(H, T + I, T + I, seed=10 + s) - 0.4} for s in (1, 2)]
    R = propagate_relevancy(maps, grads, ["single_stream"] * 2, n_text=T)
    full = torch.eye(T + I)
    for a, g in zip(maps, grads, strict=True):
        full = full + head_mean_relevance(a["joint"], g["joint"]) @ full
    t, i = slice(0, T), slice(T, T + I)
    for key, (rows, cols) in {"tt": (t, t), "ti": (t, i), "it": (i, t), "ii": (i, i)}.items():
        torch.testing.assert_close(R[key], full[rows, cols], msg=key)
    with pytest.raises(ValueError, match="needs n_text"):
        propagate_relevancy(maps, grads, ["single_stream"] * 2)


def test_weights_that_are_not_the_kinds_directions_are_an_error():
    layer = {"text_self": torch.rand(1, 2, 2), "image_self": torch.rand(1, 3, 3)}
    with pytest.raises(ValueError, match=r"fusion layer 0 \(coattention\): weights for"):
        propagate_relevancy([layer], [layer], ["coattention"])


# --------------------------------------------------------------------------- on the model


def test_attention_weights_receive_gradients_with_retain_grad(tiny, batch):
    model, _ = tiny
    inputs = {k: v for k, v in batch.items() if k != "ids"}
    out = model(**inputs, output_attentions=True)
    weights = [w for layer in out.attentions for w in layer.values()]
    for w in weights:
        w.retain_grad()
    out.logits[:, 0].sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", ["relevancy", "gradcam", "integrated_gradients"])
def test_explain_shapes_targets_and_tokens(tiny, batch, method):
    model, tok = tiny
    exps = explain(model, batch, method=method, tokenizer=tok, n_steps=8)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "ids"}).logits
    assert [e.id for e in exps] == ["s/0", "s 1"]
    for e, row, mask in zip(exps, logits, batch["attention_mask"], strict=True):
        assert e.target == e.predicted == int(row.argmax())
        assert len(e.tokens) == len(e.token_scores) == int(mask.sum())
        assert e.tokens[0] == "[CLS]" and e.tokens[-1] == "[SEP]"
        assert e.special.tolist() == [True] + [False] * (len(e.tokens) - 2) + [True]
        assert e.patch_scores.shape == (8, 8)
        assert np.isfinite(e.patch_scores).all() and np.isfinite(e.token_scores).all()
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_mean_pooled_models_read_relevancy_from_every_row(tiny, batch):
    """Mean pooling reads every token alike, so the scores are the rows' mean, not row 0."""
    cls_model, tok = tiny
    model = build_model(cls_model.config.model_copy(update={"pooling": "mean"})).eval()
    model.load_state_dict(cls_model.state_dict())
    (exp,) = explain(model, {k: v[:1] for k, v in batch.items()}, tokenizer=tok)
    maps = {k: torch.as_tensor(v) for k, v in exp.maps.items()}
    tokens = maps["R_tt"].mean(0) + maps["R_it"].mean(0)
    np.testing.assert_allclose(exp.token_scores, tokens.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(exp.token_scores, (maps["R_tt"][0] + maps["R_it"][0]).numpy())


def test_explain_a_chosen_class(tiny, batch):
    model, tok = tiny
    exps = explain(model, batch, target=2, method="relevancy", tokenizer=tok)
    assert [e.target for e in exps] == [2, 2]
    assert set(exps[0].maps) == {"R_tt", "R_ii", "R_ti", "R_it"}
    assert exps[0].maps["R_ti"].shape == (len(exps[0].tokens), 65)


def test_integrated_gradients_are_complete(tiny, batch):
    """Σ attributions ≈ f(x) − f(baseline) (Sundararajan et al. 2017, completeness)."""
    model, tok = tiny
    exps = explain(model, batch, method="integrated_gradients", tokenizer=tok, n_steps=32)
    for e in exps:
        total = e.token_scores.sum() + e.patch_scores.sum()
        assert abs(e.maps["convergence_delta"]) < 0.05 * max(1.0, abs(total))
    # Steps split into chunks of 5 rows (not a multiple of the batch): the same answer.
    whole, chunked = (
        explain(
            model,
            batch,
            method="integrated_gradients",
            tokenizer=tok,
            n_steps=8,
            internal_batch_size=size,
        )
        for size in (None, 5)
    )
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(a.token_scores, b.token_scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.patch_scores, b.patch_scores, rtol=1e-4, atol=1e-6)


def test_a_batch_dataclass_works_like_a_mapping(tiny, batch):
    from vilalign.data.types import Batch

    model, tok = tiny
    typed = Batch(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=torch.zeros_like(batch["input_ids"]),
        pixel_values=batch["pixel_values"],
        ids=batch["ids"],
    )
    a = explain(model, typed, method="relevancy", tokenizer=tok)
    b = explain(model, batch, method="relevancy", tokenizer=tok)
    assert [e.id for e in a] == ["s/0", "s 1"]
    np.testing.assert_allclose(a[1].patch_scores, b[1].patch_scores, rtol=1e-5)


def test_unknown_method_is_an_error(tiny, batch):
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        explain(tiny[0], batch, method="lime")


def test_saved_overlays_and_token_html(tiny, batch, tmp_path):
    model, tok = tiny
    exps = explain(model, batch, method="relevancy", tokenizer=tok)
    paths = save_explanations(exps, batch["pixel_values"], tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == [
        "index.html",
        "s_0_relevancy.html",
        "s_0_relevancy.png",
        "s_1_relevancy.html",
        "s_1_relevancy.png",
    ]
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "out" / "s_1_relevancy.html").read_text()
    assert "&lt;" in page and "<b>" not in page  # tokens escaped
    assert "s_1_relevancy.png" in page


def test_tokens_html_scales_words_and_greys_special_tokens():
    html = tokens_html(
        ["[CLS]", "cat", "dog", "[SEP]"],
        np.array([9.0, 2.0, 1.0, 9.0]),
        np.array([True, False, False, True]),
    )
    assert "rgba(220,30,30,1.000)" in html and "rgba(220,30,30,0.500)" in html
    assert html.count("color:#888") == 2


# --------------------------------------------------------------------------- sanity check

FILLERS = ["a", "the", "small", "big", "photo", "of", "with", "and", "picture", "image"]
WORDS = ["cat", "dog", "bird", "fish"]  # label 1 needs "cat"
COLOURS = [(2.0, -1.0, -1.0), (-1.0, -1.0, 2.0), (-1.0, 2.0, -1.0), (2.0, 2.0, -1.0)]  # red first


def synthetic_task(n: int, tokenizer, seed: int):
    """Label 1 iff the top-left quadrant's square is red AND the caption says "cat".

    The top-left quadrant (2×2 patches of a 4×4 grid) always holds one 8-px square at a
    random place; the other quadrants hold non-red distractor squares at random; the key
    word sits at a random place among 4 filler words. Half the samples are positive;
    negatives miss the colour, the word, or both (so the model must check both).
    """
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 32, 32, generator=g) * 0.2

    def rand(k: int) -> int:
        return int(torch.randint(0, k, (1,), generator=g))

    def square(b: int, r0: int, c0: int, colour: int) -> None:
        r, c = r0 + rand(9), c0 + rand(9)
        pixels[b, :, r : r + 8, c : c + 8] = torch.tensor(COLOURS[colour])[:, None, None]

    positive = torch.rand(n, generator=g) < 0.5
    kind = torch.randint(0, 3, (n,), generator=g)  # negatives: 0 wrong word, 1 wrong colour, 2 both
    colour = torch.where(positive | (kind == 0), 0, torch.randint(1, 4, (n,), generator=g))
    word = torch.where(positive | (kind == 1), 0, torch.randint(1, 4, (n,), generator=g))
    key_pos = torch.randint(0, 5, (n,), generator=g)
    texts = []
    for b in range(n):
        square(b, 0, 0, int(colour[b]))
        for r0, c0 in ((0, 16), (16, 0), (16, 16)):
            if rand(2):
                square(b, r0, c0, 1 + rand(3))
        words = [FILLERS[rand(len(FILLERS))] for _ in range(5)]
        words[int(key_pos[b])] = WORDS[int(word[b])]
        texts.append(" ".join(words))
    enc = tokenizer(texts, padding="max_length", max_length=8, return_tensors="pt")
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": pixels,
    }
    labels = ((colour == 0) & (word == 0)).long()
    return batch, labels, key_pos + 1  # +1: [CLS] comes first


def small_config():
    # No unimodal encoder layers: every token mixing happens in the fusion layers, where
    # the relevancy rules see it (they do not see inside the BERT/ViT encoders).
    return model_config(
        "tiny",
        num_labels=2,
        depth=3,
        coattention_layers=[1],
        dropout=0.0,
        attention_dropout=0.0,
        coattention_size=64,
        pooled_size=64,
        ffn_ratio=2.0,
        text={
            "num_layers": 0,
            "hidden_size": 64,
            "num_heads": 2,
            "intermediate_size": 128,
            "max_length": 8,
        },
        image={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 0, "num_heads": 2},
    )


@pytest.fixture(scope="module")
def trained(one_thread):
    return train_synthetic(seed=0)


def train_synthetic(seed: int):
    """The trained and a re-initialised model, test accuracy, and the positive test samples."""
    cfg = small_config()
    tok = load_tokenizer(cfg.text)
    data, labels, _ = synthetic_task(2048, tok, seed=0)
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.text_word_embeddings.weight.requires_grad_(False)  # 30k rows: slow to update
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        idx = torch.randint(0, len(labels), (32,), generator=g)
        out = model(**{k: v[idx] for k, v in data.items()})
        loss = torch.nn.functional.cross_entropy(out.logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    test, test_labels, key_pos = synthetic_task(96, tok, seed=99)
    with torch.no_grad():
        accuracy = (model(**test).logits.argmax(-1) == test_labels).float().mean().item()
    positives = test_labels == 1
    test = {k: v[positives] for k, v in test.items()}
    torch.manual_seed(123)
    randomised = build_model(cfg).eval()  # Adebayo et al. (2018): same architecture, re-initialised
    return model, randomised, tok, accuracy, test, key_pos[positives]


def masses(model, tok, test, key_pos, method):
    exps = explain(model, test, target=1, method=method, tokenizer=tok, n_steps=16)
    top_left = quadrant_mask((4, 4), "top_left")
    quadrant = [e.patch_mass(top_left) for e in exps]
    word = [e.token_mass([int(k)]) for e, k in zip(exps, key_pos, strict=True)]
    # A map with no positive mass at all (NaN share) puts nothing in the region: 0.
    return np.nan_to_num(quadrant).mean(), np.nan_to_num(word).mean()


@pytest.mark.parametrize("method", ["relevancy", "gradcam", "integrated_gradients"])
def test_attribution_finds_the_quadrant_and_the_word_only_in_the_trained_model(trained, method):
    """> 50 % of the mass on the top-left quadrant and on the key word; not so when re-initialised.

    Over training seeds 0–4 (share in the quadrant / on the word): relevancy 0.92/0.90,
    0.70/0.79, 0.53/0.62, 0.52/0.77, 0.79/0.69; integrated gradients 0.74/0.98, 0.84/0.51,
    0.54/0.95, 0.65/0.98, 0.85/0.99; Grad-CAM on the last layer's input patch states
    0.96, 0.80, 0.06, 0.07, 0.63 — for seeds 2 and 3 the class evidence sits in an earlier
    layer's patch states, so Grad-CAM at a fixed layer is the fragile one. Re-initialised:
    relevancy 0.26/0.20, integrated gradients 0.41/0.14, Grad-CAM 0.44. Seed 0 is tested.
    """
    model, randomised, tok, accuracy, test, key_pos = trained
    assert accuracy > 0.95
    quadrant, word = masses(model, tok, test, key_pos, method)
    rand_quadrant, rand_word = masses(randomised, tok, test, key_pos, method)
    assert quadrant > 0.5, f"{method}: {quadrant:.2f} of the patch mass in the top-left quadrant"
    assert rand_quadrant < 0.5 and rand_quadrant < quadrant - 0.2
    if method != "gradcam":  # Grad-CAM explains patches only
        assert word > 0.5, f"{method}: {word:.2f} of the token mass on the key word"
        assert rand_word < 0.5 and rand_word < word - 0.2

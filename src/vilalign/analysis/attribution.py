"""Why a prediction was made: which tokens and which image patches drove one output.

Three methods, each giving a score per real text token and per image patch:

- ``relevancy``: the bi-modal relevancy propagation of Chefer, Gur & Wolf (2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
  Transformers", ICCV, eqs. 5–11), through the fusion layers' attention maps;
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) on the image stream's patch states;
- ``integrated_gradients``: integrated gradients (Sundararajan et al. 2017) on the word
  and patch embeddings, with ``captum.attr.LayerIntegratedGradients``.

The relevancy propagation covers the fusion layers only: the unimodal encoders (BERT,
timm ViT) run fused attention and do not return weights, so relevancy treats them as
token-wise. For a model whose encoders have layers, the maps say how the fusion layers
mixed the encoders' outputs; with zero encoder layers they are the full propagation.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vilalign.analysis.attention import DIRECTIONS, image_grid, model_inputs

log = logging.getLogger(__name__)

Tensor = torch.Tensor
METHODS = ("relevancy", "gradcam", "integrated_gradients")


@dataclass
class Explanation:
    """One sample's attribution for one output class.

    ``token_scores`` (n_tokens,) covers the sample's real tokens, ``patch_scores``
    (rows, cols) the image patches in grid order. Scores may be signed (integrated
    gradients); "mass" is always the share of the positive part.
    """

    id: str
    method: str
    target: int
    predicted: int
    tokens: list[str]
    special: np.ndarray  # (n_tokens,) bool: [CLS], [SEP] and other special tokens
    token_scores: np.ndarray
    patch_scores: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # R_tt, R_ii, R_ti, R_it

    def patch_mass(self, region: np.ndarray) -> float:
        """Share of positive patch relevance inside ``region`` (a (rows, cols) bool mask)."""
        return _share(self.patch_scores, np.asarray(region, bool))

    def token_mass(self, positions: Sequence[int]) -> float:
        """Share of positive relevance on the token ``positions``, special tokens excluded."""
        chosen = np.zeros(len(self.tokens), bool)
        chosen[list(positions)] = True
        words = ~self.special
        return _share(self.token_scores[words], chosen[words])


def _share(scores: np.ndarray, chosen: np.ndarray) -> float:
    positive = np.clip(scores, 0, None)
    total = positive.sum()
    return float(positive[chosen].sum() / total) if total > 0 else float("nan")


def quadrant_mask(grid: tuple[int, int], quadrant: str) -> np.ndarray:
    """(rows, cols) bool mask of one image quadrant: 'top_left', 'top_right', ... ."""
    rows, cols = grid
    vertical, horizontal = quadrant.split("_")
    r = slice(0, rows // 2) if vertical == "top" else slice(rows // 2, rows)
    c = slice(0, cols // 2) if horizontal == "left" else slice(cols // 2, cols)
    mask = np.zeros(grid, bool)
    mask[r, c] = True
    return mask


# --------------------------------------------------------------------------- relevancy


def head_mean_relevance(weights: Tensor, grad: Tensor) -> Tensor:
    """Ā = E_h[(∇A ⊙ A)⁺] for one sample's (H, Q, K) map (Chefer et al. 2021, eq. 5)."""
    return (grad * weights).clamp(min=0).mean(0)


def normalise_self_relevance(r: Tensor) -> Tensor:
    """R̄ = (R − I) / row-sum + I (Chefer et al. 2021, eqs. 8–9).

    Rows of ``R − I`` that hold no relevance yet (all zero, e.g. before any
    self-attention layer) stay zero instead of dividing by zero.
    """
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    residual = r - eye
    rows = residual.sum(-1, keepdim=True)
    residual = torch.where(rows > 0, residual / rows.clamp_min(1e-12), residual)
    return residual + eye


def propagate_relevancy(
    attentions: Sequence[Mapping[str, Tensor]],
    grads: Sequence[Mapping[str, Tensor]],
    is_coattention: Sequence[bool],
) -> dict[str, Tensor]:
    """Relevancy maps R_tt, R_ii, R_ti, R_it of one sample through the fusion layers.

    ``attentions[i][direction]`` and ``grads[i][direction]`` are (H, Q, K). Start with
    R_tt = I, R_ii = I, R_ti = R_it = 0 (eq. 6) and update layer by layer:
    self-attention of stream s: R_ss += Ā R_ss, R_sq += Ā R_sq (eqs. 6–7);
    co-attention from s to q: R_sq += R̄_ssᵀ Ā R̄_qq, R_ss += Ā R_qs (eqs. 10–11), both
    directions computed from the matrices before the layer's update.
    """
    first = attentions[0]
    n_t = first["text_self" if "text_self" in first else "text_to_image"].shape[-2]
    n_i = first["image_self" if "image_self" in first else "image_to_text"].shape[-2]
    dev = next(iter(first.values())).device
    R = {
        "tt": torch.eye(n_t, device=dev),
        "ii": torch.eye(n_i, device=dev),
        "ti": torch.zeros(n_t, n_i, device=dev),
        "it": torch.zeros(n_i, n_t, device=dev),
    }
    for attn, grad, coattn in zip(attentions, grads, is_coattention, strict=True):
        a = {d: head_mean_relevance(attn[d].float(), grad[d].float()) for d in attn}
        R = _coattention_rule(R, a) if coattn else _self_attention_rule(R, a)
    return R


def _self_attention_rule(R: dict[str, Tensor], a: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        "tt": R["tt"] + a["text_self"] @ R["tt"],
        "ti": R["ti"] + a["text_self"] @ R["ti"],
        "ii": R["ii"] + a["image_self"] @ R["ii"],
        "it": R["it"] + a["image_self"] @ R["it"],
    }


def _coattention_rule(R: dict[str, Tensor], a: dict[str, Tensor]) -> dict[str, Tensor]:
    tt_bar, ii_bar = normalise_self_relevance(R["tt"]), normalise_self_relevance(R["ii"])
    a_ti, a_it = a["text_to_image"], a["image_to_text"]
    return {
        "ti": R["ti"] + tt_bar.T @ a_ti @ ii_bar,
        "tt": R["tt"] + a_ti @ R["it"],
        "it": R["it"] + ii_bar.T @ a_it @ tt_bar,
        "ii": R["ii"] + a_it @ R["ti"],
    }


# --------------------------------------------------------------------------- shared setup


@dataclass
class _Prepared:
    inputs: dict[str, Tensor]
    ids: list[str]
    n_text: list[int]
    tokens: list[list[str]]
    special: list[np.ndarray]


def _prepare(model: nn.Module, batch: Any, tokenizer: Any) -> _Prepared:
    inputs, ids = model_inputs(batch)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items() if v is not None}
    B = inputs["input_ids"].shape[0]
    ids = [str(i) for i in ids] if ids else [str(i) for i in range(B)]
    # Real tokens come first (BERT tokenizers pad on the right).
    n_text = inputs["attention_mask"].sum(-1).tolist()
    tokens, special = [], []
    for b, n in enumerate(n_text):
        seq = inputs["input_ids"][b, :n].tolist()
        tokens.append(_token_strings(seq, tokenizer))
        special.append(_special_mask(seq, tokenizer))
    return _Prepared(inputs, ids, [int(n) for n in n_text], tokens, special)


def _token_strings(ids: list[int], tokenizer: Any) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]


def _special_mask(ids: list[int], tokenizer: Any) -> np.ndarray:
    if tokenizer is not None:
        return np.isin(ids, list(tokenizer.all_special_ids))
    # Without a tokenizer, assume BERT's [CLS] … [SEP] framing.
    mask = np.zeros(len(ids), bool)
    mask[[0, -1]] = True
    return mask


def _targets(logits: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    predicted = logits.argmax(-1)
    if target is None:
        return predicted
    t = torch.as_tensor(target, device=logits.device).long()
    return t.expand_as(predicted) if t.ndim == 0 else t


@contextmanager
def _eval_with_grad(model: nn.Module):
    """Eval mode (no dropout) with gradients on, restoring the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _selected_score(logits: Tensor, targets: Tensor) -> Tensor:
    # Samples are independent in eval mode, so ∂(Σ_b y_b)/∂x_b = ∂y_b/∂x_b: one backward.
    return logits.gather(1, targets[:, None]).sum()


# --------------------------------------------------------------------------- methods


def _relevancy(model: nn.Module, prep: _Prepared, target: Any) -> list[dict[str, Any]]:
    out = model(**prep.inputs, output_attentions=True)
    for attn in out.attentions:
        for direction, w in attn.items():
            if not w.requires_grad:
                raise ValueError(f"relevancy: {direction} weights carry no gradient (frozen?)")
            w.retain_grad()
    targets = _targets(out.logits, target)
    _selected_score(out.logits, targets).backward()
    results = []
    for b, n in enumerate(prep.n_text):
        attn = [_cut(a, b, n, lambda w: w) for a in out.attentions]
        grads = [_cut(a, b, n, lambda w: w.grad) for a in out.attentions]
        R = propagate_relevancy(attn, grads, out.is_coattention)
        scores = _relevancy_scores(R, model.num_prefix_tokens, model.config.pooling)
        results.append(scores | {"logits": out.logits[b]})
    return _with_targets(results, targets)


def _cut(attn: Mapping[str, Tensor], b: int, n: int, get: Any) -> dict[str, Tensor]:
    """Sample ``b``'s (H, Q, K) maps with text dimensions cut to its ``n`` real tokens."""
    cut = {"text": slice(0, n), "image": slice(None)}
    out = {}
    for direction, w in attn.items():
        q, k = DIRECTIONS[direction]
        out[direction] = get(w)[b][:, cut[q], cut[k]].detach()
    return out


def _relevancy_scores(R: dict[str, Tensor], prefix: int, pooling: str = "cls") -> dict[str, Any]:
    """Token and patch scores from the rows of the tokens the poolers read.

    The prediction reads both the text [CLS] (row 0 of R_tt, R_ti) and the image CLS (row
    0 of R_ii, R_it) — they are pooled and fused — so a token's relevance is the sum of the
    two rows (Chefer et al. read the one [CLS] row of their single-CLS models). With mean
    pooling every real token is read alike: the rows are averaged instead.
    """

    def read(r: Tensor) -> Tensor:
        return r[0] if pooling == "cls" else r.mean(dim=0)

    tokens = read(R["tt"]) + read(R["it"])  # (n_text,)
    patches = (read(R["ti"]) + read(R["ii"]))[prefix:]  # (P,)
    maps = {f"R_{k}": v.detach().cpu().numpy() for k, v in R.items()}
    return {"tokens": tokens, "patches": patches, "maps": maps}


def _gradcam(model: nn.Module, prep: _Prepared, target: Any, layer: int) -> list[dict[str, Any]]:
    captured: dict[str, Tensor] = {}
    handle = model.fusion_layers[layer].register_forward_pre_hook(_capture_image(captured))
    try:
        out = model(**prep.inputs)
    finally:
        handle.remove()
    targets = _targets(out.logits, target)
    _selected_score(out.logits, targets).backward()
    states = captured["image"]
    patches = states[:, model.num_prefix_tokens :].detach()  # (B, P, D)
    grads = states.grad[:, model.num_prefix_tokens :]  # (B, P, D)
    # Grad-CAM: channel weights = gradient averaged over patches, map = ReLU(Σ_k α_k h_k).
    alpha = grads.mean(1, keepdim=True)  # (B, 1, D)
    cam = (alpha * patches).sum(-1).clamp(min=0)  # (B, P)
    results = [
        {"tokens": None, "patches": cam[b], "maps": {}, "logits": out.logits[b]}
        for b in range(len(prep.ids))
    ]
    return _with_targets(results, targets)


def _capture_image(store: dict[str, Tensor]) -> Any:
    """A forward pre-hook keeping a fusion layer's input image states and their gradient."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        text, image, *rest = args
        if not image.requires_grad:  # frozen encoder: make the states a leaf to read ∇
            image = image.detach().requires_grad_(True)
        else:
            image.retain_grad()
        store["image"] = image
        return (text, image, *rest)

    return hook


def _integrated_gradients(
    model: nn.Module,
    prep: _Prepared,
    target: Any,
    tokenizer: Any,
    n_steps: int,
    internal_batch_size: int | None,
) -> list[dict[str, Any]]:
    from captum.attr import LayerIntegratedGradients

    inputs = prep.inputs
    mask = inputs["attention_mask"]
    # BERT's default token types are zeros; passing them explicitly lets captum tile them
    # with the other per-sample arguments, also when it splits the steps into chunks.
    type_ids = inputs.get("token_type_ids", torch.zeros_like(inputs["input_ids"]))

    def forward(ids: Tensor, pixels: Tensor, attention_mask: Tensor, types: Tensor) -> Tensor:
        return model(ids, attention_mask, pixels, token_type_ids=types).logits

    with torch.no_grad():
        logits = model(**inputs).logits
    targets = _targets(logits, target)
    layers = [model.text_word_embeddings, model.image_encoder.vit.patch_embed]
    with warnings.catch_warnings():
        # captum warns about any list of layers; these two are independent (text vs image).
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        lig = LayerIntegratedGradients(forward, layers)
    # Baseline: words replaced by [PAD] (special tokens kept), image all zeros, i.e. the
    # normalisation mean — "no words, a blank image" in the model's input space.
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    special = torch.zeros_like(mask, dtype=torch.bool)
    for b, s in enumerate(prep.special):
        special[b, : len(s)] = torch.as_tensor(s)
    base_ids = torch.where(special | (mask == 0), inputs["input_ids"], pad)
    (text_attr, patch_attr), delta = lig.attribute(
        (inputs["input_ids"], inputs["pixel_values"]),
        baselines=(base_ids, torch.zeros_like(inputs["pixel_values"])),
        target=targets,
        additional_forward_args=(mask, type_ids),
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    results = []
    for b, n in enumerate(prep.n_text):
        results.append(
            {
                "tokens": text_attr[b, :n].sum(-1),
                "patches": patch_attr[b].sum(-1),
                "maps": {"convergence_delta": delta[b].detach().cpu().numpy()},
                "logits": logits[b],
            }
        )
    return _with_targets(results, targets)


def _with_targets(results: list[dict[str, Any]], targets: Tensor) -> list[dict[str, Any]]:
    for r, t in zip(results, targets.tolist(), strict=True):
        r["target"] = int(t)
    return results


def explain(
    model: nn.Module,
    batch: Any,
    target: int | Sequence[int] | Tensor | None = None,
    method: str = "relevancy",
    tokenizer: Any = None,
    gradcam_layer: int = -1,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
) -> list[Explanation]:
    """Attribute each sample's output ``target`` (default: its predicted class).

    ``batch`` is a :class:`~vilalign.data.types.Batch` or a mapping of model inputs;
    ``method`` one of :data:`METHODS`. ``gradcam_layer`` picks the fusion layer whose
    *input* patch states Grad-CAM reads; the default, the last layer's input, is the last
    place patch states still reach the prediction (the pooler reads only the image CLS of
    the last layer's output, so its patch outputs have zero gradient). ``n_steps``:
    integration steps for integrated gradients, run ``internal_batch_size`` rows at a time
    (None: all B·n_steps at once). Runs in eval mode and clears parameter gradients.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r} (allowed: {', '.join(METHODS)})")
    prep = _prepare(model, batch, tokenizer)
    with _eval_with_grad(model):
        if method == "relevancy":
            results = _relevancy(model, prep, target)
        elif method == "gradcam":
            results = _gradcam(model, prep, target, gradcam_layer)
        else:
            results = _integrated_gradients(
                model, prep, target, tokenizer, n_steps, internal_batch_size
            )
    model.zero_grad(set_to_none=True)
    return [_explanation(model, prep, b, method, r) for b, r in enumerate(results)]


def _explanation(
    model: nn.Module, prep: _Prepared, b: int, method: str, r: dict[str, Any]
) -> Explanation:
    grid = image_grid(model)
    n = prep.n_text[b]
    tokens = r["tokens"]
    token_scores = np.zeros(n) if tokens is None else tokens.detach().double().cpu().numpy()
    return Explanation(
        id=prep.ids[b],
        method=method,
        target=r["target"],
        predicted=int(r["logits"].argmax()),
        tokens=prep.tokens[b],
        special=prep.special[b],
        token_scores=token_scores,
        patch_scores=r["patches"].detach().double().cpu().numpy().reshape(grid),
        maps=r["maps"],
    )


# --------------------------------------------------------------------------- outputs


def save_explanations(
    explanations: Sequence[Explanation],
    pixel_values: Tensor,
    out_dir: str | Path,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    index: str | None = "index.html",
) -> list[Path]:
    """Write a PNG heat-map overlay and an HTML token snippet per explanation.

    ``pixel_values`` (B, C, H, W) are the normalised images the explanations came from
    (row b ↔ explanation b); ``mean``/``std`` undo the normalisation (the model's
    ``image_data_config``). Files: ``<id>_<method>.png`` and ``<id>_<method>.html``, plus
    an ``index`` page showing them all (None: none; name it per method when several methods
    share a folder). Returns every path written.
    """
    from vilalign.analysis.visualize import (
        denormalise,
        explanation_html,
        safe_name,
        save_heatmap_overlay,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = denormalise(pixel_values, mean, std)
    paths, snippets = [], []
    for e, image in zip(explanations, images, strict=True):
        stem = f"{safe_name(e.id)}_{e.method}"
        title = f"{e.id}: {e.method}, class {e.target} (predicted {e.predicted})"
        png = save_heatmap_overlay(image, e.patch_scores, out_dir / f"{stem}.png", title)
        snippet = explanation_html(e, png.name)
        (out_dir / f"{stem}.html").write_text(snippet, encoding="utf-8")
        paths += [png, out_dir / f"{stem}.html"]
        snippets.append(snippet)
    if index is not None:
        paths.append(out_dir / index)
        paths[-1].write_text(_page("\n<hr>\n".join(snippets)), encoding="utf-8")
    log.info("wrote %d explanations to %s", len(explanations), out_dir)
    return paths


def _page(body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>vilalign explanations'
        f"</title></head>\n<body>\n{body}\n</body></html>\n"
    )

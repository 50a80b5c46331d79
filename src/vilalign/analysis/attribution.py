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
Which rule a layer's map takes is read from its declared directions (query stream, key
stream): a stream attending to itself takes the self-attention rule, one stream attending
to the other the bi-modal rule, and a joint (single-stream) map is Chefer et al.'s
self-attention rule on the one concatenated sequence, split into text and image blocks.

What each baseline supports: relevancy needs fusion layers (concat_features, text_only and
image_only have none and are refused, naming the baseline); Grad-CAM reads the image
stream's input to a fusion layer, or to the ViT's last block on a model without fusion
layers (text_only, which ignores the image, is refused); integrated gradients attribute
the modalities the prediction reads — a unimodal baseline's other modality gets zero
scores and is left out of ``Explanation.attributed``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vilalign.analysis.attention import (
    check_directions,
    eval_mode,
    image_grid,
    kind_name,
    model_inputs,
    require_fusion_layers,
    require_modality,
    sample_maps,
)
from vilalign.model.checkpoint import unwrap
from vilalign.model.fusion import IMAGE, JOINT, TEXT, direction_streams, split_joint

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
    #: The streams the method attributed; the others' scores are zeros, not measurements.
    attributed: tuple[str, ...] = (TEXT, IMAGE)
    #: What the target and predicted outputs mean (``ModelConfig.label_names``; None:
    #: unnamed), and the model's probability of the target (softmax over the head's
    #: outputs; sigmoid of a single binary logit).
    target_name: str | None = None
    predicted_name: str | None = None
    probability: float | None = None

    def label(self, which: str = "target") -> str:
        """The answer string of the target (or ``"predicted"``) output, else "class N"."""
        index = self.target if which == "target" else self.predicted
        name = self.target_name if which == "target" else self.predicted_name
        return name if name is not None else f"class {index}"

    def title(self) -> str:
        """'<id>: relevancy for "circle" (p = 0.83; predicted "circle")'."""
        p = f"p = {self.probability:.2f}; " if self.probability is not None else ""
        said = "predicted" if self.predicted == self.target else "but predicted"
        return (
            f'{self.id}: {self.method} for "{self.label()}" ({p}{said} "{self.label("predicted")}")'
        )

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


_SHORT = {TEXT: "t", IMAGE: "i"}  # R's keys: "ti" = text rows, image columns


def propagate_relevancy(
    attentions: Sequence[Mapping[str, Tensor]],
    grads: Sequence[Mapping[str, Tensor]],
    layer_kinds: Sequence[str | bool],
    n_text: int | None = None,
) -> dict[str, Tensor]:
    """Relevancy maps R_tt, R_ii, R_ti, R_it of one sample through the fusion layers.

    ``attentions[i][direction]`` and ``grads[i][direction]`` are (H, Q, K); ``layer_kinds[i]``
    is layer ``i``'s kind (see :func:`~vilalign.analysis.attention.kind_name`), whose
    declared directions say which stream attends to which. ``n_text``: the real text
    tokens, where a joint map's image part starts (needed only for joint maps).

    Start with R_tt = I, R_ii = I, R_ti = R_it = 0 (eq. 6) and update layer by layer, every
    term from the matrices before the layer's update: a stream s attending to itself,
    R_ss += Ā R_ss, R_so += Ā R_so (eqs. 6–7); s attending to the other stream q (bi-modal),
    R_sq += R̄_ssᵀ Ā R̄_qq, R_ss += Ā R_qs (eqs. 10–11); a joint map is the self-attention
    rule R += Ā R on the concatenated sequence, applied block by block.
    """
    layers = []
    for i, (attn, grad, kind) in enumerate(zip(attentions, grads, layer_kinds, strict=True)):
        check_directions(attn, kind_name(kind), i)
        layers.append(_relevance_blocks(attn, grad, n_text))
    R = _identity_relevance(layers)
    for blocks in layers:
        R = _update_relevance(R, blocks)
    return R


Block = tuple[str, str, Tensor, bool]  # query stream, key stream, Ā, bi-modal


def _relevance_blocks(
    attn: Mapping[str, Tensor], grad: Mapping[str, Tensor], n_text: int | None
) -> list[Block]:
    """Ā of every direction with its streams; a joint map cut into its four stream blocks."""
    blocks: list[Block] = []
    for direction, w in attn.items():
        a = head_mean_relevance(w.float(), grad[direction].float())  # (Q, K)
        q, k = direction_streams(direction)
        if q != JOINT:
            blocks.append((q, k, a, q != k))
            continue
        if n_text is None:
            raise ValueError(f"propagate_relevancy: the joint map {direction!r} needs n_text")
        for q_part, rows in split_joint(a, n_text, dim=0).items():
            for k_part, block in split_joint(rows, n_text, dim=1).items():
                blocks.append((q_part, k_part, block, False))
    return blocks


def _identity_relevance(layers: Sequence[Sequence[Block]]) -> dict[str, Tensor]:
    """R before any layer: each stream relevant to itself only (eq. 6)."""
    sizes: dict[str, int] = {}
    for q, k, a, _ in (block for blocks in layers for block in blocks):
        sizes.setdefault(q, a.shape[0])
        sizes.setdefault(k, a.shape[1])
    if set(sizes) != {TEXT, IMAGE}:
        raise ValueError(f"propagate_relevancy: the maps cover the streams {sorted(sizes)} only")
    dev = layers[0][0][2].device
    t, i = sizes[TEXT], sizes[IMAGE]
    return {
        "tt": torch.eye(t, device=dev),
        "ii": torch.eye(i, device=dev),
        "ti": torch.zeros(t, i, device=dev),
        "it": torch.zeros(i, t, device=dev),
    }


def _update_relevance(R: dict[str, Tensor], blocks: Sequence[Block]) -> dict[str, Tensor]:
    """One layer: R_qs += Ā_qk R_ks for every block and stream s, except the bi-modal
    rule's R_qk += R̄_qqᵀ Ā_qk R̄_kk (Chefer et al. 2021, eqs. 6–11)."""
    new = dict(R)
    if any(bimodal for *_, bimodal in blocks):
        bar = {s: normalise_self_relevance(R[c + c]) for s, c in _SHORT.items()}
    for q, k, a, bimodal in blocks:
        for s in (TEXT, IMAGE):
            key = _SHORT[q] + _SHORT[s]
            if bimodal and s == k:
                new[key] = new[key] + bar[q].T @ a @ bar[k]
            else:
                new[key] = new[key] + a @ R[_SHORT[k] + _SHORT[s]]
    return new


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


def _selected_score(logits: Tensor, targets: Tensor) -> Tensor:
    # Samples are independent in eval mode, so ∂(Σ_b y_b)/∂x_b = ∂y_b/∂x_b: one backward.
    return logits.gather(1, targets[:, None]).sum()


# --------------------------------------------------------------------------- methods


def _relevancy(model: nn.Module, prep: _Prepared, target: Any) -> list[dict[str, Any]]:
    require_fusion_layers(model, "relevancy")
    out = model(**prep.inputs, output_attentions=True)
    for attn in out.attentions:
        for direction, w in attn.items():
            if not w.requires_grad:
                raise ValueError(f"relevancy: {direction} weights carry no gradient (frozen?)")
            w.retain_grad()
    targets = _targets(out.logits, target)
    _selected_score(out.logits, targets).backward()
    n_image = out.image_sequence.shape[1]
    results = []
    for b, n in enumerate(prep.n_text):
        attn = [_detached(sample_maps(a, b, n, n_image)) for a in out.attentions]
        grads = [
            sample_maps({d: w.grad for d, w in a.items()}, b, n, n_image) for a in out.attentions
        ]
        R = propagate_relevancy(attn, grads, out.layer_kinds, n_text=n)
        scores = _relevancy_scores(R, model.num_prefix_tokens, model.config.pooling)
        results.append(scores | {"logits": out.logits[b]})
    return _with_targets(results, targets)


def _detached(maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {direction: w.detach() for direction, w in maps.items()}


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
    require_modality(model, IMAGE, "Grad-CAM")
    site, position = _gradcam_site(model, layer)
    captured: dict[str, Tensor] = {}
    handle = site.register_forward_pre_hook(_capture_image(captured, position))
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
    return _with_targets(results, targets, attributed=(IMAGE,))


def _gradcam_site(model: nn.Module, layer: int) -> tuple[nn.Module, int]:
    """The module whose input image states Grad-CAM reads, and their position in its args.

    A fusion layer (args: text, image, ...); without fusion layers, a block of the ViT
    (args: x), whose input patch states are the last that reach the image CLS.
    """
    m = unwrap(model)
    stack, position = (m.fusion_layers, 1) if len(m.fusion_layers) else (m.image_encoder.blocks, 0)
    if not -len(stack) <= layer < len(stack):
        where = "fusion layers" if position == 1 else "image encoder blocks"
        raise ValueError(f"gradcam_layer: {layer} is not one of the model's {len(stack)} {where}")
    return stack[layer], position


def _capture_image(store: dict[str, Tensor], position: int) -> Any:
    """A forward pre-hook keeping a module's input image states (``args[position]``) and
    their gradient."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        args = list(args)
        image = args[position]
        if not image.requires_grad:  # frozen encoder: make the states a leaf to read ∇
            image = image.detach().requires_grad_(True)
        else:
            image.retain_grad()
        store["image"] = args[position] = image
        return tuple(args)

    return hook


def _integrated_gradients(
    model: nn.Module,
    prep: _Prepared,
    target: Any,
    tokenizer: Any,
    n_steps: int,
    internal_batch_size: int | None,
) -> list[dict[str, Any]]:
    with torch.no_grad():
        logits = model(**prep.inputs).logits
    targets = _targets(logits, target)
    # Only the streams the prediction reads: a unimodal baseline's other embedding never
    # reaches the logits (autograd refuses to differentiate it), and its share is zero.
    used = unwrap(model).modalities
    attr, delta = _layer_integrated_gradients(
        model, used, prep, targets, _baseline_ids(prep, tokenizer), n_steps, internal_batch_size
    )
    results = []
    for b, n in enumerate(prep.n_text):
        tokens = attr[TEXT][b, :n].sum(-1) if TEXT in attr else torch.zeros(n)
        patches = attr[IMAGE][b].sum(-1) if IMAGE in attr else torch.zeros(model.num_patches)
        results.append(
            {
                "tokens": tokens,
                "patches": patches,
                "maps": {"convergence_delta": delta[b].detach().cpu().numpy()},
                "logits": logits[b],
            }
        )
    return _with_targets(results, targets, attributed=used)


def _baseline_ids(prep: _Prepared, tokenizer: Any) -> Tensor:
    """Words replaced by [PAD] (special tokens kept): with the all-zero image (the
    normalisation mean), "no words, a blank image" in the model's input space."""
    ids, mask = prep.inputs["input_ids"], prep.inputs["attention_mask"]
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    special = torch.zeros_like(mask, dtype=torch.bool)
    for b, s in enumerate(prep.special):
        special[b, : len(s)] = torch.as_tensor(s)
    return torch.where(special | (mask == 0), ids, pad)


def _layer_integrated_gradients(
    model: nn.Module,
    streams: tuple[str, ...],
    prep: _Prepared,
    targets: Tensor,
    base_ids: Tensor,
    n_steps: int,
    internal_batch_size: int | None,
) -> tuple[dict[str, Tensor], Tensor]:
    """captum's LayerIntegratedGradients on the word and/or patch embeddings: the
    attributions of each of ``streams`` (B, T or P, D) and the convergence deltas (B,)."""
    from captum.attr import LayerIntegratedGradients

    inputs = prep.inputs
    # BERT's default token types are zeros; passing them explicitly lets captum tile them
    # with the other per-sample arguments, also when it splits the steps into chunks.
    type_ids = inputs.get("token_type_ids", torch.zeros_like(inputs["input_ids"]))

    def forward(ids: Tensor, pixels: Tensor, attention_mask: Tensor, types: Tensor) -> Tensor:
        return model(ids, attention_mask, pixels, token_type_ids=types).logits

    layers = {TEXT: model.text_word_embeddings, IMAGE: model.image_encoder.vit.patch_embed}
    with warnings.catch_warnings():
        # captum warns about any list of layers; these two are independent (text vs image).
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        lig = LayerIntegratedGradients(forward, [layers[s] for s in streams])
    attributions, delta = lig.attribute(
        (inputs["input_ids"], inputs["pixel_values"]),
        baselines=(base_ids, torch.zeros_like(inputs["pixel_values"])),
        target=targets,
        additional_forward_args=(inputs["attention_mask"], type_ids),
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    return dict(zip(streams, attributions, strict=True)), delta


def _with_targets(
    results: list[dict[str, Any]],
    targets: Tensor,
    attributed: tuple[str, ...] = (TEXT, IMAGE),
) -> list[dict[str, Any]]:
    for r, t in zip(results, targets.tolist(), strict=True):
        r["target"] = int(t)
        r["attributed"] = attributed
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
    with eval_mode(model), torch.enable_grad():
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
    names = unwrap(model).config.label_names
    predicted, probability = _prediction(r["logits"].detach().double(), r["target"])
    return Explanation(
        id=prep.ids[b],
        method=method,
        target=r["target"],
        predicted=predicted,
        target_name=_name(names, r["target"]),
        predicted_name=_name(names, predicted),
        probability=probability,
        tokens=prep.tokens[b],
        special=prep.special[b],
        token_scores=token_scores,
        patch_scores=r["patches"].detach().double().cpu().numpy().reshape(grid),
        maps=r["maps"],
        attributed=r["attributed"],
    )


def _prediction(logits: Tensor, target: int) -> tuple[int, float]:
    """The predicted output and the probability of ``target``: a single logit is a binary
    head (sigmoid; output 1 = positive), several are classes (softmax)."""
    if logits.numel() == 1:
        p = float(torch.sigmoid(logits.reshape(())))
        return int(p > 0.5), p if target == 1 else 1 - p
    return int(logits.argmax()), float(torch.softmax(logits.reshape(-1), 0)[target])


def _name(names: Sequence[str] | None, index: int) -> str | None:
    """``names[index]`` (a binary head's two names: negative, positive), else None."""
    if names is None or not 0 <= index < len(names):
        return None
    return names[index]


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
        png = save_heatmap_overlay(image, e.patch_scores, out_dir / f"{stem}.png", e.title())
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

"""What the attention heads look at: entropy per head, layer and direction; is co-attention
more focused than self-attention; bertviz views of any layer.

Entropy follows Clark et al. (2019, "What Does BERT Look At?", §3): for each query, the
entropy ``H = −Σ_k p_k log p_k`` of its attention distribution over the real (unmasked)
keys, averaged over real queries. Normalised entropy divides by ``log n`` with ``n`` the
number of real keys — for co-attention the *other* stream's key count — so that a head over
10 tokens and a head over 196 patches compare on one scale (1 = uniform, 0 = one key).

Weights are read from the model's explicit-attention path in eval mode: the pre-dropout
softmax, which the model test suite shows computes the same function as the fused path.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from vilalign.model.checkpoint import unwrap

log = logging.getLogger(__name__)

Tensor = torch.Tensor
Attentions = Mapping[str, Tensor]

# direction → (query stream, key stream)
DIRECTIONS: dict[str, tuple[str, str]] = {
    "text_self": ("text", "text"),
    "image_self": ("image", "image"),
    "text_to_image": ("text", "image"),
    "image_to_text": ("image", "text"),
    # A single-stream (ViLT-style) layer's one attention over text tokens then patches,
    # split by the stream of the query.
    "text_joint": ("text", "joint"),
    "image_joint": ("image", "joint"),
}
JOINT = "joint"  # the key of a single-stream layer's weights, (B, H, T+P, T+P)
COATTENTION = "coattention"
SELF_ATTENTION = "self"

# --------------------------------------------------------------------------- entropy


def query_entropy(weights: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Entropy (nats) of every query's attention distribution over real keys.

    ``weights`` (B, H, Q, K); ``key_mask`` (B, K), 1 = real key. Weight on masked keys
    is dropped and each row renormalised over the real keys, so padding never changes
    the value (the model already gives padded keys exactly 0). ``0·log 0 = 0``.
    Returns (B, H, Q) in float64.
    """
    p = weights.detach().double()
    if key_mask is not None:
        p = p * key_mask.to(p)[:, None, None, :]  # (B, H, Q, K)
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return -torch.special.xlogy(p, p).sum(-1)


def head_entropy(
    weights: Tensor, key_mask: Tensor | None = None, query_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per sample and head: entropy averaged over real queries, raw and normalised.

    Normalised by ``log n_keys`` of each sample's real keys (Clark et al. 2019 compare raw
    entropies within BERT; normalising lets text heads and patch heads compare). A
    sample with a single real key has normalised entropy NaN (no choice to measure).
    Returns two (B, H) float64 tensors.
    """
    B, _, Q, K = weights.shape
    ent = query_entropy(weights, key_mask)  # (B, H, Q)
    qm = torch.ones(B, Q, dtype=ent.dtype) if query_mask is None else query_mask.to(ent)
    qm = qm.to(ent.device)
    mean = (ent * qm[:, None, :]).sum(-1) / qm.sum(-1, keepdim=True)  # (B, H)
    n_keys = torch.full((B,), float(K), dtype=ent.dtype, device=ent.device)
    if key_mask is not None:
        n_keys = key_mask.to(ent).sum(-1)
    log_n = n_keys.log()[:, None]  # (B, 1)
    normalised = torch.where(log_n > 0, mean / log_n, torch.full_like(mean, float("nan")))
    return mean, normalised


def _stream_masks(attention_mask: Tensor) -> dict[str, Tensor | None]:
    # Text padding is masked; every image token (CLS and patches) is real.
    return {"text": attention_mask, "image": None}


def _joint_mask(attention_mask: Tensor, n_keys: int) -> Tensor:
    """Real keys of a joint sequence: the text tokens (masked), then every image token."""
    image = attention_mask.new_ones(attention_mask.shape[0], n_keys - attention_mask.shape[1])
    return torch.cat([attention_mask, image], dim=1)


def entropy_frame(
    attentions: Sequence[Attentions],
    is_coattention: Sequence[bool],
    attention_mask: Tensor,
    ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A tidy table of per-sample head entropies for one batch.

    ``attentions[i]`` is fusion layer ``i``'s dict of weights (``VilbertOutput.attentions``).
    Columns: id, layer, layer_kind, direction, query_stream, key_stream, head, entropy,
    normalized_entropy, n_keys.
    """
    B = attention_mask.shape[0]
    ids = [str(i) for i in range(B)] if ids is None or len(ids) == 0 else [str(i) for i in ids]
    frames = []
    for layer, (attn, coattn) in enumerate(zip(attentions, is_coattention, strict=True)):
        for direction, weights in _split_joint(attn, attention_mask.shape[1]).items():
            frames.append(_direction_frame(weights, direction, attention_mask, ids, layer, coattn))
    if not frames:
        raise ValueError(
            "no attention weights: the model has no fusion layers (e.g. the concat_features, "
            "text_only or image_only baseline), so there is no attention to measure"
        )
    return pd.concat(frames, ignore_index=True)


def _split_joint(attn: Attentions, n_text: int) -> dict[str, Tensor]:
    """A single-stream layer's joint weights as text-query and image-query rows."""
    if JOINT not in attn:
        return dict(attn)
    weights = attn[JOINT]  # (B, H, T+P, T+P)
    return {"text_joint": weights[:, :, :n_text], "image_joint": weights[:, :, n_text:]}


def _direction_frame(
    weights: Tensor,
    direction: str,
    attention_mask: Tensor,
    ids: list[str],
    layer: int,
    coattn: bool,
) -> pd.DataFrame:
    q_stream, k_stream = DIRECTIONS[direction]
    masks = _stream_masks(attention_mask.to(weights.device))
    if k_stream == JOINT:
        masks[JOINT] = _joint_mask(masks["text"], weights.shape[-1])
    raw, norm = head_entropy(weights, masks[k_stream], masks[q_stream])  # (B, H)
    B, H = raw.shape
    k_mask = masks[k_stream]
    n_keys = k_mask.sum(-1) if k_mask is not None else torch.full((B,), weights.shape[-1])
    return pd.DataFrame(
        {
            "id": np.repeat(ids, H),
            "layer": layer,
            "layer_kind": COATTENTION if coattn else SELF_ATTENTION,
            "direction": direction,
            "query_stream": q_stream,
            "key_stream": k_stream,
            "head": np.tile(np.arange(H), B),
            "entropy": raw.cpu().numpy().ravel(),
            "normalized_entropy": norm.cpu().numpy().ravel(),
            "n_keys": np.repeat(n_keys.cpu().numpy().astype(int), H),
        }
    )


def model_inputs(batch: Any) -> tuple[dict[str, Tensor], list[str]]:
    """Model inputs and sample ids from a :class:`~vilalign.data.types.Batch` or a mapping."""
    get = batch.get if isinstance(batch, Mapping) else lambda k, d=None: getattr(batch, k, d)
    inputs = {
        "input_ids": get("input_ids"),
        "attention_mask": get("attention_mask"),
        "pixel_values": get("pixel_values"),
        "token_type_ids": get("token_type_ids", None),
    }
    return inputs, list(get("ids", None) or [])


def attention_entropy(
    model: nn.Module,
    loader: Iterable[Any],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """Per-sample entropy of every head, layer and direction over a data loader.

    Runs the model in eval mode (attention dropout off: after-dropout weights are not the
    model's distribution) without gradients, and restores its training mode. Samples
    without ids are numbered in loader order. See :func:`entropy_frame` for the columns.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    frames, seen = [], 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                inputs, ids = model_inputs(batch)
                inputs = {k: v.to(device) if v is not None else v for k, v in inputs.items()}
                out = model(**inputs, output_attentions=True)
                B = inputs["input_ids"].shape[0]
                ids = ids or [str(seen + j) for j in range(B)]
                frames.append(
                    entropy_frame(out.attentions, out.is_coattention, out.attention_mask, ids)
                )
                seen += B
    finally:
        model.train(was_training)
    if not frames:
        raise ValueError("attention_entropy: the loader yielded no batches")
    return pd.concat(frames, ignore_index=True)


def head_means(df: pd.DataFrame, value: str = "normalized_entropy") -> pd.DataFrame:
    """One row per (layer, layer_kind, direction, head): mean, std and count over samples."""
    keys = ["layer", "layer_kind", "direction", "query_stream", "key_stream", "head"]
    out = df.groupby(keys, sort=True)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": value, "std": f"{value}_std", "count": "n_samples"})


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class FocusComparison:
    """Co-attention heads vs self-attention heads: is co-attention more focused?

    The unit is the head (its mean over samples): samples within a head are not
    independent draws of "a head". ``delta`` = mean(co) − mean(self) (negative = co more
    focused) with a bootstrap CI; ``prob_lower`` = P(a co head < a self head), the
    common-language effect size, and ``rank_biserial`` = 2·prob_lower − 1.
    """

    value: str
    layer: int | None
    query_stream: str | None
    n_coattention: int
    n_self: int
    mean_coattention: float
    mean_self: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    u_statistic: float
    p_mannwhitney: float
    p_permutation: float
    prob_lower: float
    rank_biserial: float
    alpha: float

    @property
    def significant(self) -> bool:
        """Both one-sided tests reject at ``alpha`` (conservative: neither test alone)."""
        return max(self.p_mannwhitney, self.p_permutation) < self.alpha

    def summary(self) -> str:
        """The result in words and numbers."""
        where = f"in layer {self.layer}" if self.layer is not None else "in all layers"
        stream = f" ({self.query_stream} queries)" if self.query_stream else ""
        verdict = "have" if self.significant else "do not have detectably"
        name = self.value.replace("_", " ")
        pct = round(100 * self.confidence)
        return (
            f"co-attention heads {where}{stream} {verdict} lower {name} than self-attention "
            f"heads: Δ = {self.delta:+.3f} [{pct}% CI {self.ci_low:+.3f}, {self.ci_high:+.3f}] "
            f"(co {self.mean_coattention:.3f}, n = {self.n_coattention} heads; self "
            f"{self.mean_self:.3f}, n = {self.n_self} heads), one-sided Mann–Whitney "
            f"U = {self.u_statistic:.1f}, p = {self.p_mannwhitney:.3g}; permutation "
            f"p = {self.p_permutation:.3g}; P(co head < self head) = {self.prob_lower:.2f}"
        )

    def as_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**row, "significant": self.significant, "summary": self.summary()}


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def compare_groups(
    co: np.ndarray,
    self_: np.ndarray,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
    value: str = "normalized_entropy",
    layer: int | None = None,
    query_stream: str | None = None,
) -> FocusComparison:
    """One-sided tests that ``co`` values are lower than ``self_`` values.

    Mann–Whitney U (rank test, no normality assumed) and a permutation test of the
    difference in means (``scipy.stats.permutation_test``, independent samples); a
    percentile bootstrap CI of the difference (``scipy.stats.bootstrap``, resampling
    each group; percentile rather than BCa because BCa is undefined for few tied heads).
    """
    co, self_ = np.asarray(co, float), np.asarray(self_, float)
    co, self_ = co[np.isfinite(co)], self_[np.isfinite(self_)]
    if len(co) < 2 or len(self_) < 2:
        raise ValueError(
            f"compare_groups: need ≥ 2 heads per group, got {len(co)} co-attention "
            f"and {len(self_)} self-attention heads"
        )
    mw = stats.mannwhitneyu(co, self_, alternative="less")
    rng = np.random.default_rng(seed)
    perm = stats.permutation_test(
        (co, self_),
        _mean_difference,
        alternative="less",
        n_resamples=n_resamples,
        vectorized=True,
        rng=rng,
    )
    boot = stats.bootstrap(
        (co, self_),
        _mean_difference,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=rng,
    )
    # U counts pairs with co > self (ties ½), so 1 − U/(n1·n2) = P(co < self).
    prob_lower = 1.0 - float(mw.statistic) / (len(co) * len(self_))
    return FocusComparison(
        value=value,
        layer=layer,
        query_stream=query_stream,
        n_coattention=len(co),
        n_self=len(self_),
        mean_coattention=float(co.mean()),
        mean_self=float(self_.mean()),
        delta=float(co.mean() - self_.mean()),
        ci_low=float(boot.confidence_interval.low),
        ci_high=float(boot.confidence_interval.high),
        confidence=confidence,
        u_statistic=float(mw.statistic),
        p_mannwhitney=float(mw.pvalue),
        p_permutation=float(perm.pvalue),
        prob_lower=prob_lower,
        rank_biserial=2.0 * prob_lower - 1.0,
        alpha=alpha,
    )


def compare_coattention_focus(
    df: pd.DataFrame,
    layer: int | None = None,
    query_stream: str | None = None,
    value: str = "normalized_entropy",
    alpha: float = 0.05,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> FocusComparison:
    """Do co-attention heads have lower (normalised) entropy than self-attention heads?

    ``df`` is a per-sample table from :func:`attention_entropy`. Co-attention heads of
    ``layer`` (every co-attention layer when None) are compared with all self-attention
    heads; ``query_stream`` ('text' or 'image') restricts both groups to heads whose
    queries come from that stream, comparing like with like.
    """
    means = head_means(df, value)
    if query_stream is not None:
        means = means[means["query_stream"] == query_stream]
    co = means[means["layer_kind"] == COATTENTION]
    if layer is not None:
        co = co[co["layer"] == layer]
    self_ = means[means["layer_kind"] == SELF_ATTENTION]
    return compare_groups(
        co[value].to_numpy(),
        self_[value].to_numpy(),
        alpha,
        n_resamples,
        confidence,
        seed,
        value,
        layer,
        query_stream,
    )


def compare_by_layer(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """One comparison per co-attention layer plus all layers together, as a table."""
    layers = sorted(df.loc[df["layer_kind"] == COATTENTION, "layer"].unique())
    results = [compare_coattention_focus(df, layer=None, **kwargs)]
    results += [compare_coattention_focus(df, layer=int(i), **kwargs) for i in layers]
    return pd.DataFrame([r.as_row() for r in results])


# --------------------------------------------------------------------------- bertviz

# bertviz names its filters after sentence pairs; ours are the two streams.
_FILTER_NAMES = {
    "Sentence A -> Sentence A": "text → text",
    "Sentence B -> Sentence B": "image → image",
    "Sentence A -> Sentence B": "text → image",
    "Sentence B -> Sentence A": "image → text",
}
_REQUIRE_TAG = (
    '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"></script>'
)
# Stands in for require.js when d3 and jQuery are inlined: bertviz's script only calls
# require.config and requirejs(['jquery', 'd3'], fn).
_REQUIRE_SHIM = """<script type="text/javascript">
var require = {config: function () {}};
function requirejs(deps, fn) {
  // d3 v3 (Debian's libjs-d3) lacks the v4 colour scheme model_view reads.
  var d3 = window.d3;
  if (!d3.schemeCategory10) { d3.schemeCategory10 = d3.scale.category10().range(); }
  fn.apply(null, deps.map(function (d) { return d === 'jquery' ? window.jQuery : d3; }));
}
</script>"""
DEBIAN_JS = {
    "d3": Path("/usr/share/javascript/d3/d3.min.js"),
    "jquery": Path("/usr/share/javascript/jquery/jquery.min.js"),
}


def local_js_assets() -> dict[str, Path] | None:
    """d3 and jQuery from Debian's ``libjs-d3`` / ``libjs-jquery``, if installed."""
    return dict(DEBIAN_JS) if all(p.is_file() for p in DEBIAN_JS.values()) else None


def patch_labels(grid: tuple[int, int], num_prefix_tokens: int = 1) -> list[str]:
    """Image-token labels: ``[IMG]`` for prefix tokens, ``p(r,c)`` for patches (row-major)."""
    rows, cols = grid
    prefix = ["[IMG]"] + [f"[IMG{i}]" for i in range(1, num_prefix_tokens)]
    return prefix[:num_prefix_tokens] + [f"p({r},{c})" for r in range(rows) for c in range(cols)]


def joint_attention(attn: Attentions, n_text: int) -> Tensor:
    """One layer's attention of one sample as a (1, H, T+I, T+I) matrix over text then image.

    Self-attention fills the diagonal blocks, co-attention the off-diagonal ones, so one
    bertviz view shows every direction with consistent layer indices (bertviz reuses the
    first list's layer indices for its encoder/decoder/cross lists).
    ``attn`` holds (H, Q, K) weights already cut to ``n_text`` real text tokens; a
    single-stream layer's ``joint`` weights are that matrix already.
    """
    if JOINT in attn:
        return attn[JOINT].detach().double().cpu()[None].round(decimals=4)
    some = next(iter(attn.values()))
    H = some.shape[0]
    n_image = (attn.get("image_self") if "image_self" in attn else attn["image_to_text"]).shape[1]
    n = n_text + n_image
    out = torch.zeros(1, H, n, n, dtype=torch.float64)
    t, i = slice(0, n_text), slice(n_text, n)
    blocks = {
        "text_self": (t, t),
        "image_self": (i, i),
        "text_to_image": (t, i),
        "image_to_text": (i, t),
    }
    for direction, w in attn.items():
        rows, cols = blocks[direction]
        out[0, :, rows, cols] = w.detach().double().cpu()
    # Four decimals are plenty to draw; float64 so that json writes 0.1002, not 0.10019999742.
    return out.round(decimals=4)


def _sample_attentions(
    attentions: Sequence[Attentions], index: int, n_text: int, n_image: int
) -> list[dict]:
    """Weights of one sample, text dimensions cut to its real tokens. (H, Q, K) each."""
    cut = {"text": slice(0, n_text), "image": slice(None)}
    out = []
    for attn in attentions:
        layer = {}
        for direction, w in attn.items():
            if direction == JOINT:  # text tokens (padding at their end), then image tokens
                start = w.shape[-1] - n_image
                keep = torch.cat([torch.arange(n_text), torch.arange(start, start + n_image)])
                keep = keep.to(w.device)
                layer[direction] = w[index][:, keep][:, :, keep]
                continue
            q, k = DIRECTIONS[direction]
            layer[direction] = w[index][:, cut[q], cut[k]]
        out.append(layer)
    return out


def bertviz_html(
    attentions: Sequence[Attentions],
    text_tokens: Sequence[str],
    grid: tuple[int, int],
    index: int = 0,
    num_prefix_tokens: int = 1,
    view: str = "head",
    layers: Sequence[int] | None = None,
    inline_js: Mapping[str, Path] | None = None,
    layer: int | None = None,
) -> str:
    """bertviz HTML of one sample's fusion-layer attention (text tokens then image tokens).

    ``text_tokens`` are the sample's real tokens (padding cut). ``view``: 'head' or 'model';
    ``layers`` narrows the fusion layers shown; ``layer``: the one the head view opens on.
    ``inline_js`` ({'d3': path, 'jquery': path}) embeds the libraries so the file opens
    offline; without it the file loads them from a CDN, as bertviz does.
    """
    from bertviz import head_view, model_view

    n_text = len(text_tokens)
    image_labels = patch_labels(grid, num_prefix_tokens)
    per_layer = _sample_attentions(attentions, index, n_text, len(image_labels))
    joint = [joint_attention(a, n_text) for a in per_layer]
    tokens = list(text_tokens) + image_labels
    if joint[0].shape[-1] != len(tokens):
        raise ValueError(
            f"bertviz_html: {joint[0].shape[-1]} attention positions but {len(tokens)} labels "
            f"(grid {grid}, {num_prefix_tokens} prefix tokens)"
        )
    include = list(layers) if layers is not None else None
    if view == "head":
        out = head_view(
            joint,
            tokens,
            sentence_b_start=n_text,
            include_layers=include,
            layer=layer,
            html_action="return",
        )
    elif view == "model":
        out = model_view(
            joint, tokens, sentence_b_start=n_text, include_layers=include, html_action="return"
        )
    else:
        raise ValueError(f"view: unknown bertviz view {view!r} (allowed: head, model)")
    return _finish_html(out.data, inline_js)


def _finish_html(body: str, inline_js: Mapping[str, Path] | None) -> str:
    for old, new in _FILTER_NAMES.items():
        body = body.replace(old, new)
    if inline_js is not None:
        libs = "".join(
            f'<script type="text/javascript">\n{Path(inline_js[name]).read_text()}\n</script>\n'
            for name in ("jquery", "d3")
        )
        if _REQUIRE_TAG not in body:
            raise RuntimeError("bertviz output changed: cannot find its require.js tag to inline")
        body = body.replace(_REQUIRE_TAG, libs + _REQUIRE_SHIM)
    title = "vilalign attention"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title></head>\n<body>\n{body}\n</body></html>\n"
    )


def image_grid(model: nn.Module) -> tuple[int, int]:
    """The (rows, cols) patch grid of the model's ViT."""
    return unwrap(model).patch_grid


def export_bertviz(
    model: nn.Module,
    batch: Any,
    path: str | Path,
    tokenizer: Any = None,
    index: int = 0,
    view: str = "head",
    layers: Sequence[int] | None = None,
    inline_js: Mapping[str, Path] | str | None = "auto",
    layer: int | None = None,
) -> Path:
    """Write a bertviz view of sample ``index`` of ``batch`` to ``path`` (HTML) and return it.

    Every fusion layer is included (``layers`` narrows it): text→text and image→image in
    self-attention layers, text→image and image→text in co-attention layers; image
    patches are labelled ``p(row,col)``. The model runs once in eval mode. ``inline_js``
    'auto' embeds d3 and jQuery from Debian's packages when installed (the file then opens
    offline) and otherwise leaves bertviz's CDN links; None always uses the CDN.
    """
    if inline_js == "auto":
        inline_js = local_js_assets()
        if inline_js is None:
            log.warning("d3/jQuery not found locally; the bertviz file loads them from a CDN")
    inputs, _ = model_inputs(batch)
    device = next(model.parameters()).device
    inputs = {k: v[index : index + 1].to(device) for k, v in inputs.items() if v is not None}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.train(was_training)
    n_text = int(inputs["attention_mask"][0].sum())
    ids = inputs["input_ids"][0, :n_text].tolist()
    tokens = (
        tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]
    )
    page = bertviz_html(
        out.attentions,
        tokens,
        image_grid(model),
        0,
        model.num_prefix_tokens,
        view,
        layers,
        inline_js,
        layer,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("wrote bertviz %s view to %s", view, path)
    return path

"""What the attention heads look at: entropy per head, layer and direction; is co-attention
more focused than self-attention; bertviz views of any layer.

Entropy follows Clark et al. (2019, "What Does BERT Look At?", §3): for each query, the
entropy ``H = −Σ_k p_k log p_k`` of its attention distribution over the real (unmasked)
keys, averaged over real queries. Three forms of concentration per head:

* ``effective_keys`` = exp(H), averaged over real queries: the number of keys a query
  spreads its attention over as if uniformly (uniform over 3 keys → 3, whatever the
  number of keys). It compares heads with different key counts — a text→image head over
  197 patches with a text self-attention head over 12 tokens — like with like, and is
  what the co- vs self-attention focus test compares by default.
* ``effective_share`` = exp(H) / n: that number as a share of the real keys (1 = uniform).
* ``normalized_entropy`` = H / log n (1 = uniform, 0 = one key). It depends on the key
  count itself: uniform attention over 3 keys scores 0.44 among 12 keys but 0.21 among
  197, so with different key counts it makes the head with more keys look more focused.

Weights are read from the model's explicit-attention path in eval mode: the pre-dropout
softmax, which the model test suite shows computes the same function as the fused path.
Which stream attends to which is what each fusion layer type declares (its ``directions``,
see :mod:`vilalign.model.fusion`), so any registered layer type is measured; a model
without fusion layers is refused with :class:`UnsupportedModelError`, naming the baseline.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from vilalign.config import COATTENTION, SELF_ATTENTION
from vilalign.model.checkpoint import unwrap
from vilalign.model.fusion import (
    IMAGE,
    JOINT,
    TEXT,
    direction_streams,
    fusion_layer_type,
    split_joint,
)
from vilalign.model.labels import output_name

log = logging.getLogger(__name__)

Tensor = torch.Tensor
Attentions = Mapping[str, Tensor]


class UnsupportedModelError(ValueError):
    """An analysis that does not apply to this model; the message names the baseline and why."""


def _model_name(model: nn.Module) -> str:
    variant = unwrap(model).config.variant
    return f"the {variant} baseline"


def require_fusion_layers(model: nn.Module, analysis: str) -> None:
    """Refuse, naming the baseline, an analysis of fusion-layer attention on a model without."""
    if len(unwrap(model).fusion_layers) == 0:
        raise UnsupportedModelError(
            f"{analysis} needs fusion layers; {_model_name(model)} has no fusion layers"
        )


def require_modality(model: nn.Module, modality: str, analysis: str) -> None:
    """Refuse an analysis of ``modality`` on a model whose prediction never reads it."""
    if modality not in unwrap(model).modalities:
        raise UnsupportedModelError(
            f"{analysis} explains the {modality} stream; {_model_name(model)} does not use it"
        )


def kind_name(kind: str | bool) -> str:
    """A fusion layer's kind; ``VilbertOutput.is_coattention``'s bools name the two
    two-stream kinds (coattention / self_attention)."""
    if isinstance(kind, bool):
        return COATTENTION if kind else SELF_ATTENTION
    fusion_layer_type(kind)  # an unknown kind fails here, naming the known ones
    return kind


def check_directions(attn: Attentions, kind: str, layer: int) -> None:
    """A layer's weights must be those its kind declares (``FusionLayer.directions``)."""
    declared = fusion_layer_type(kind).directions
    if set(attn) != set(declared):
        raise ValueError(
            f"fusion layer {layer} ({kind}): weights for {sorted(attn)}, but the kind "
            f"declares the directions {sorted(declared)}"
        )


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
    entropies within BERT). A sample with a single real key has normalised entropy NaN
    (no choice to measure). Returns two (B, H) float64 tensors. The key-count-free form
    is :func:`head_focus`.
    """
    focus = head_focus(weights, key_mask, query_mask)
    return focus["entropy"], focus["normalized_entropy"]


def head_focus(
    weights: Tensor, key_mask: Tensor | None = None, query_mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Per sample and head, every form of concentration (see the module doc), averaged
    over real queries: ``entropy``, ``normalized_entropy``, ``effective_keys`` (exp H per
    query, then averaged) and ``effective_share`` (effective keys / real keys). Each (B, H).
    """
    B, _, Q, K = weights.shape
    ent = query_entropy(weights, key_mask)  # (B, H, Q)
    qm = torch.ones(B, Q, dtype=ent.dtype) if query_mask is None else query_mask.to(ent)
    qm = qm.to(ent.device)[:, None, :]  # (B, 1, Q)

    def over_queries(per_query: Tensor) -> Tensor:
        return (per_query * qm).sum(-1) / qm.sum(-1)  # (B, H)

    mean, effective = over_queries(ent), over_queries(ent.exp())
    n_keys = torch.full((B,), float(K), dtype=ent.dtype, device=ent.device)
    if key_mask is not None:
        n_keys = key_mask.to(ent).sum(-1)
    log_n = n_keys.log()[:, None]  # (B, 1)
    normalised = torch.where(log_n > 0, mean / log_n, torch.full_like(mean, float("nan")))
    return {
        "entropy": mean,
        "normalized_entropy": normalised,
        "effective_keys": effective,
        "effective_share": effective / n_keys[:, None],
    }


def _real_positions(stream: str, attention_mask: Tensor, length: int) -> Tensor | None:
    """Mask of the real positions along a ``stream`` axis of ``length`` (None: all real).

    Text padding is masked; every image token (CLS and patches) is real; a joint sequence
    is the text tokens, then the image tokens.
    """
    if stream == TEXT:
        return attention_mask
    if stream == IMAGE:
        return None
    image = attention_mask.new_ones(attention_mask.shape[0], length - attention_mask.shape[1])
    return torch.cat([attention_mask, image], dim=1)


def entropy_frame(
    attentions: Sequence[Attentions],
    layer_kinds: Sequence[str | bool],
    attention_mask: Tensor,
    ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A tidy table of per-sample head entropies for one batch.

    ``attentions[i]`` is fusion layer ``i``'s dict of weights (``VilbertOutput.attentions``)
    and ``layer_kinds[i]`` its kind (``VilbertOutput.layer_kinds``; see :func:`kind_name`).
    Columns: id, layer, layer_kind, direction, query_stream, key_stream, head, entropy,
    normalized_entropy, effective_keys, effective_share, n_keys.
    """
    B = attention_mask.shape[0]
    ids = [str(i) for i in range(B)] if ids is None or len(ids) == 0 else [str(i) for i in ids]
    frames = []
    for layer, (attn, kind) in enumerate(zip(attentions, layer_kinds, strict=True)):
        kind = kind_name(kind)
        check_directions(attn, kind, layer)
        for direction, (q, k, w) in query_rows(attn, attention_mask.shape[1]).items():
            frames.append(_direction_frame(w, (direction, q, k), attention_mask, ids, layer, kind))
    if not frames:
        raise ValueError(
            "no attention weights: the model has no fusion layers (e.g. the concat_features, "
            "text_only or image_only baseline), so there is no attention to measure"
        )
    return pd.concat(frames, ignore_index=True)


def query_rows(attn: Attentions, n_text: int) -> dict[str, tuple[str, str, Tensor]]:
    """Every direction's (query stream, key stream, weights), as the layer types declare them.

    A joint map (single-stream layers) is split by the stream of its queries into
    ``text_<direction>`` and ``image_<direction>`` rows over all joint keys; ``n_text`` is
    the batch's (padded) text length, where the image tokens start.
    """
    out: dict[str, tuple[str, str, Tensor]] = {}
    for direction, weights in attn.items():
        q, k = direction_streams(direction)
        if q != JOINT:
            out[direction] = (q, k, weights)
            continue
        for part, rows in split_joint(weights, n_text, dim=-2).items():
            out[f"{part}_{direction}"] = (part, JOINT, rows)
    return out


def _direction_frame(
    weights: Tensor,
    direction: tuple[str, str, str],
    attention_mask: Tensor,
    ids: list[str],
    layer: int,
    kind: str,
) -> pd.DataFrame:
    name, q_stream, k_stream = direction
    attention_mask = attention_mask.to(weights.device)
    k_mask = _real_positions(k_stream, attention_mask, weights.shape[-1])
    q_mask = _real_positions(q_stream, attention_mask, weights.shape[-2])
    focus = head_focus(weights, k_mask, q_mask)  # each (B, H)
    B, H = focus["entropy"].shape
    n_keys = k_mask.sum(-1) if k_mask is not None else torch.full((B,), weights.shape[-1])
    columns = {name: values.cpu().numpy().ravel() for name, values in focus.items()}
    return pd.DataFrame(
        {
            "id": np.repeat(ids, H),
            "layer": layer,
            "layer_kind": kind,
            "direction": name,
            "query_stream": q_stream,
            "key_stream": k_stream,
            "head": np.tile(np.arange(H), B),
            **columns,
            "n_keys": np.repeat(n_keys.cpu().numpy().astype(int), H),
        }
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: the weights read are the model's distribution), restoring the
    model's training mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    A model without fusion layers is refused (:class:`UnsupportedModelError`).
    """
    require_fusion_layers(model, "attention entropy")
    device = device or next(model.parameters()).device
    frames, seen = [], 0
    with eval_mode(model), torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            inputs, ids = model_inputs(batch)
            inputs = {k: v.to(device) if v is not None else v for k, v in inputs.items()}
            out = model(**inputs, output_attentions=True)
            B = inputs["input_ids"].shape[0]
            ids = ids or [str(seen + j) for j in range(B)]
            frames.append(entropy_frame(out.attentions, out.layer_kinds, out.attention_mask, ids))
            seen += B
    if not frames:
        raise ValueError("attention_entropy: the loader yielded no batches")
    return pd.concat(frames, ignore_index=True)


#: The concentration the co- vs self-attention test compares by default: comparable
#: across key counts (see the module doc).
FOCUS_VALUE = "effective_keys"
#: Every form of concentration a per-sample table carries.
FOCUS_FORMS = ("normalized_entropy", "effective_keys", "effective_share")


def head_means(df: pd.DataFrame, value: str = "normalized_entropy") -> pd.DataFrame:
    """One row per (layer, layer_kind, direction, head): mean, std and count over samples
    of ``value``, and the mean of every other form of concentration the table has."""
    keys = ["layer", "layer_kind", "direction", "query_stream", "key_stream", "head"]
    grouped = df.groupby(keys, sort=True)
    out = grouped[value].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": value, "std": f"{value}_std", "count": "n_samples"})
    others = [f for f in (*FOCUS_FORMS, "n_keys") if f in df.columns and f != value]
    if others:
        out = out.merge(grouped[others].mean().reset_index(), on=keys)
    return out


# --------------------------------------------------------------------------- statistics


#: How the focus test's summary names each form of concentration.
VALUE_NAMES = {
    "effective_keys": "effective number of attended keys (exp H)",
    "effective_share": "share of the real keys attended (exp H / n)",
    "normalized_entropy": "normalized entropy",
}


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
        name = VALUE_NAMES.get(self.value, self.value.replace("_", " "))
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


def _resampled(
    co: np.ndarray,
    self_: np.ndarray,
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[Any, Any]:
    """The permutation test (one-sided) and the percentile bootstrap of mean(co) − mean(self),
    in that order from one generator."""
    groups = (co, self_)
    perm = stats.permutation_test(
        groups,
        _mean_difference,
        alternative="less",
        n_resamples=n_resamples,
        vectorized=True,
        rng=rng,
    )
    boot = stats.bootstrap(
        groups,
        _mean_difference,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=rng,
    )
    return perm, boot


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
    perm, boot = _resampled(co, self_, n_resamples, confidence, np.random.default_rng(seed))
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
    value: str = FOCUS_VALUE,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> FocusComparison:
    """Are co-attention heads more focused than self-attention heads?

    ``value`` is the concentration compared (lower = more focused): by default the
    effective number of attended keys exp(H), which does not depend on how many keys a
    head could attend to — normalised entropy would make a head over 197 patches look
    more focused than an identical one over 12 tokens. ``df`` is a per-sample table from
    :func:`attention_entropy`. Co-attention heads of ``layer`` (every co-attention layer
    when None) are compared with all self-attention heads; ``query_stream`` ('text' or
    'image') restricts both groups to heads whose queries come from that stream.
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
#: Where Debian's ``libjs-d3`` / ``libjs-jquery`` install the libraries; ``$VILALIGN_JS_DIR``
#: names another folder laid out the same way (``d3/d3.min.js``, ``jquery/jquery.min.js``).
JS_DIR = Path("/usr/share/javascript")
JS_FILES = {"d3": Path("d3/d3.min.js"), "jquery": Path("jquery/jquery.min.js")}
OFFLINE_FIX = (
    "for a page that opens offline, install them: `sudo apt-get install libjs-d3 "
    "libjs-jquery` (or `make offline-js`), or set VILALIGN_JS_DIR to a folder holding "
    "d3/d3.min.js and jquery/jquery.min.js"
)


def js_dir() -> Path:
    """The folder searched for d3 and jQuery: ``$VILALIGN_JS_DIR``, else Debian's."""
    return Path(os.environ.get("VILALIGN_JS_DIR") or JS_DIR)


def local_js_assets(root: str | Path | None = None) -> dict[str, Path] | None:
    """d3 and jQuery under ``root`` (default :func:`js_dir`), or None unless both are there."""
    files = {name: Path(root or js_dir()) / rel for name, rel in JS_FILES.items()}
    return files if all(p.is_file() for p in files.values()) else None


def patch_labels(grid: tuple[int, int], num_prefix_tokens: int = 1) -> list[str]:
    """Image-token labels: ``[IMG]`` for prefix tokens, ``p(r,c)`` for patches (row-major)."""
    rows, cols = grid
    prefix = ["[IMG]"] + [f"[IMG{i}]" for i in range(1, num_prefix_tokens)]
    return prefix[:num_prefix_tokens] + [f"p({r},{c})" for r in range(rows) for c in range(cols)]


def joint_attention(attn: Attentions, n_text: int) -> Tensor:
    """One layer's attention of one sample as a (1, H, T+I, T+I) matrix over text then image.

    Each direction fills the block of its (query stream, key stream): self-attention the
    diagonal blocks, co-attention the off-diagonal ones, so one bertviz view shows every
    direction with consistent layer indices (bertviz reuses the first list's layer indices
    for its encoder/decoder/cross lists). ``attn`` holds (H, Q, K) weights already cut to
    ``n_text`` real text tokens; a joint map (single-stream layers) is that matrix already.
    """
    streams = {direction: direction_streams(direction) for direction in attn}
    for direction, (q, _) in streams.items():
        if q == JOINT:
            return attn[direction].detach().double().cpu()[None].round(decimals=4)
    H = next(iter(attn.values())).shape[0]
    n = n_text + _image_length(attn, streams)
    out = torch.zeros(1, H, n, n, dtype=torch.float64)
    span = {TEXT: slice(0, n_text), IMAGE: slice(n_text, n)}
    for direction, w in attn.items():
        q, k = streams[direction]
        out[0, :, span[q], span[k]] = w.detach().double().cpu()
    # Four decimals are plenty to draw; float64 so that json writes 0.1002, not 0.10019999742.
    return out.round(decimals=4)


def _image_length(attn: Attentions, streams: Mapping[str, tuple[str, str]]) -> int:
    for direction, (q, k) in streams.items():
        if IMAGE in (q, k):
            return attn[direction].shape[-2 if q == IMAGE else -1]
    raise ValueError(f"no direction of {sorted(attn)} involves the image stream")


def _real_index(stream: str, w: Tensor, dim: int, n_text: int, n_image: int) -> slice | Tensor:
    """The real positions along ``w``'s axis ``dim`` of a ``stream``: a sample's ``n_text``
    real text tokens (padding comes after them), every image token; a joint axis has both."""
    if stream == TEXT:
        return slice(0, n_text)
    if stream == IMAGE:
        return slice(None)
    length = w.shape[dim]
    keep = torch.cat([torch.arange(n_text), torch.arange(length - n_image, length)])
    return keep.to(w.device)


def sample_maps(attn: Attentions, index: int, n_text: int, n_image: int) -> dict[str, Tensor]:
    """Sample ``index``'s (H, Q, K) maps with its text padding cut from every stream axis.

    ``n_text``: the sample's real text tokens; ``n_image``: the image tokens (prefix
    included), which locate the image part of a joint axis.
    """
    out = {}
    for direction, w in attn.items():
        q, k = direction_streams(direction)
        rows = _real_index(q, w, -2, n_text, n_image)
        cols = _real_index(k, w, -1, n_text, n_image)
        out[direction] = w[index][:, rows][:, :, cols]
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
    caption: str = "",
) -> str:
    """bertviz HTML of one sample's fusion-layer attention (text tokens then image tokens).

    ``text_tokens`` are the sample's real tokens (padding cut). ``view``: 'head' or 'model';
    ``layers`` narrows the fusion layers shown; ``layer``: the one the head view opens on.
    ``inline_js`` ({'d3': path, 'jquery': path}) embeds the libraries so the file opens
    offline; without it the file loads them from a CDN, as bertviz does. ``caption``: a
    line of text above the view (the sample and its prediction).
    """
    from bertviz import head_view, model_view

    n_text = len(text_tokens)
    image_labels = patch_labels(grid, num_prefix_tokens)
    per_layer = [sample_maps(a, index, n_text, len(image_labels)) for a in attentions]
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
    return _finish_html(out.data, inline_js, caption)


def _sample_caption(model: nn.Module, batch: Any, index: int, logits: Tensor | None) -> str:
    """'sample test-3, predicted 'yes'' (the label's name, see vilalign.model.labels)."""
    ids = getattr(batch, "ids", None) or []
    text = f"sample {ids[index]}" if index < len(ids) else f"sample {index}"
    if logits is None:
        return text
    config = model.config
    row = logits[0].float()
    if config.num_labels == 1:  # binary: the positive class when its logit is above 0
        names = config.label_names or ["class 0", "class 1"]
        return f"{text}, predicted {names[int(row[0] > 0)]!r}"
    return f"{text}, predicted {output_name(config, int(row.argmax()))!r}"


def _finish_html(body: str, inline_js: Mapping[str, Path] | None, caption: str = "") -> str:
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
    title = "vilalign attention" + (f": {caption}" if caption else "")
    heading = f"<p>{html.escape(caption)}</p>\n" if caption else ""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title></head>\n<body>\n{heading}{body}\n</body></html>\n"
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
    patches are labelled ``p(row,col)``. The model runs once in eval mode; the page names
    the sample and, for a model with a task head, its predicted label. ``inline_js``
    'auto' embeds d3 and jQuery from Debian's packages when installed (or from
    ``$VILALIGN_JS_DIR``; the file then opens offline) and otherwise leaves bertviz's CDN
    links, with a warning that says how to fix it; None always uses the CDN.
    """
    require_fusion_layers(model, "the bertviz view")
    if inline_js == "auto":
        inline_js = local_js_assets()
        if inline_js is None:
            log.warning(
                "d3/jQuery not found under %s: the bertviz page loads them from a CDN and is "
                "blank offline; %s", js_dir(), OFFLINE_FIX,
            )  # fmt: skip
    inputs, _ = model_inputs(batch)
    device = next(model.parameters()).device
    inputs = {k: v[index : index + 1].to(device) for k, v in inputs.items() if v is not None}
    with eval_mode(model), torch.no_grad():
        out = model(**inputs, output_attentions=True)
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
        caption=_sample_caption(unwrap(model), batch, index, out.logits),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("wrote bertviz %s view to %s", view, path)
    return path

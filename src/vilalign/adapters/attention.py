"""Attention entropy of a published model: the table ``analysis.attention`` makes for ours.

Each batch's weights (:meth:`Adapter.attention_maps`) go through
:func:`vilalign.analysis.attention.entropy_frame` unchanged, with two preparations:

- **Padded image tokens are cut away** before, not masked: ViLT pads images of different
  sizes and region models pad region lists, always at the end, and the model gives padded
  keys zero weight. Samples with the same number of real image tokens are measured
  together with their weights cut to those tokens, so every entropy, key count and mean
  over queries sees real tokens only.
- **Heads are labelled by their sublayer.** A BridgeTower or LXMERT cross-modal layer holds
  a cross-attention *and* a self-attention sublayer per stream; each direction is measured
  under the fusion layer kind that declares it (cross: ``coattention``, self:
  ``self_attention``), so the co- vs self-attention focus test compares the two kinds of
  head (within the same layers) as it does for vilalign's co-attention and self-attention
  layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch

from vilalign.adapters.base import Adapter, AttentionMaps
from vilalign.analysis.attention import entropy_frame
from vilalign.model.fusion import FUSION_LAYERS, IMAGE, JOINT, direction_streams

Tensor = torch.Tensor
Group = tuple[list[dict[str, Tensor]], list[bool], Tensor, list[str]]


def _cut(weights: Tensor, direction: str, n_text: int, n_image: int) -> Tensor:
    """(B, H, Q, K) weights without the padded image tokens past the first ``n_image``."""
    if direction == JOINT:  # text tokens, then image tokens
        keep = n_text + n_image
        return weights[:, :, :keep, :keep]
    query, key = direction_streams(direction)
    if query == IMAGE:
        weights = weights[:, :, :n_image]
    if key == IMAGE:
        weights = weights[..., :n_image]
    return weights


def unpadded_groups(maps: AttentionMaps, ids: list[str]) -> Iterator[Group]:
    """(layers, is_coattention, text mask, ids) per set of samples with equally many real
    image tokens, weights cut to them (one group when nothing is padded)."""
    if maps.image_mask is None or bool(maps.image_mask.all()):
        yield maps.layers, maps.is_coattention, maps.text_mask, ids
        return
    counts = maps.image_mask.sum(dim=1)
    n_text = maps.text_mask.shape[1]
    for n in dict.fromkeys(counts.tolist()):  # first-seen order
        rows = (counts == n).nonzero()[:, 0]
        layers = [
            {d: _cut(w[rows], d, n_text, int(n)) for d, w in layer.items()} for layer in maps.layers
        ]
        yield layers, maps.is_coattention, maps.text_mask[rows], [ids[r] for r in rows.tolist()]


def _owner_kind(direction: str) -> str:
    """The registered fusion layer kind that declares ``direction`` (one per name)."""
    return next(kind for kind, cls in FUSION_LAYERS.items() if direction in cls.directions)


def layer_frames(
    layers: Sequence[dict[str, Tensor]], text_mask: Tensor, ids: list[str]
) -> list[pd.DataFrame]:
    """Entropy rows of every layer, each direction under the kind that declares it.

    A BridgeTower or LXMERT cross-modal layer holds cross-attention *and* self-attention
    sublayers: its cross directions are measured as a co-attention layer's and its self
    directions as a self-attention layer's (same layer index), so the focus test compares
    the two kinds of head within the same layers, and every weight dict is one its kind
    declares (``analysis.attention`` checks that).
    """
    frames = []
    for index, layer in enumerate(layers):
        parts: dict[str, dict[str, Tensor]] = {}
        for direction, weights in layer.items():
            parts.setdefault(_owner_kind(direction), {})[direction] = weights
        for kind, part in parts.items():
            frame = entropy_frame([part], [kind], text_mask, ids)
            frames.append(frame.assign(layer=index))
    return frames


def attention_entropy(
    adapter: Adapter,
    loader: Iterable[Any],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """Per-sample entropy of every head, fusion layer and direction; the columns of
    :func:`vilalign.analysis.attention.entropy_frame`. Eval mode, no gradients."""
    device = device or next(adapter.parameters()).device
    was_training = adapter.training
    adapter.eval()
    frames, seen = [], 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                b = batch.to(device)
                ids = [str(x) for x in b.ids] or [str(seen + j) for j in range(len(b))]
                maps = adapter.attention_maps(b)
                for layers, _, text_mask, group_ids in unpadded_groups(maps, ids):
                    frames += layer_frames(layers, text_mask, group_ids)
                seen += len(b)
    finally:
        adapter.train(was_training)
    if not frames:
        raise ValueError("attention_entropy: the loader yielded no batches")
    return pd.concat(frames, ignore_index=True)

"""The built-in fusion layer types: ViLBERT's co-attention block, the per-stream self-attention
layer and the ViLT-style single-stream layer (see :mod:`vilalign.model.fusion` for the contract).

All take and return ``(text, image)`` so the model stacks them in any order. Layout
follows vilbert-multi-task's ``BertConnectionLayer``: each stream's queries attend to
the other stream's keys/values (both directions computed from the states *before*
either is updated), then residual + LayerNorm, then a per-stream feed-forward with
residual + LayerNorm. Unlike LXMERT, the two directions have their own weights and
both directions' attention maps are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn

from vilalign.config import COATTENTION, SELF_ATTENTION, SINGLE_STREAM, ModelConfig
from vilalign.model.attention import MultiHeadAttention
from vilalign.model.fusion import (
    IMAGE,
    JOINT,
    TEXT,
    Attentions,
    FusionLayer,
    FusionOutput,
    declare_directions,
    register_fusion_layer,
    split_joint,
)

# The kinds' names are configuration vocabulary (vilalign.config), re-exported here with
# the classes that carry them.
__all__ = [
    "COATTENTION",
    "SELF_ATTENTION",
    "SINGLE_STREAM",
    "Attentions",
    "CoAttentionLayer",
    "SelfAttentionLayer",
    "SingleStreamLayer",
]


class FeedForward(nn.Module):
    """Post-LN feed-forward sublayer: ``LN(x + dropout(W2 gelu(W1 x)))``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(self.act(self.fc1(x)))))


class AttentionSublayer(nn.Module):
    """Post-LN attention sublayer: ``LN(q + dropout(attn(q, kv)))``."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden: int,
        heads: int,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(query_dim, key_dim, hidden, heads, attn_dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(query_dim, eps=1e-12)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_mask: torch.Tensor | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = self.attn(queries, keys, key_mask, need_weights)
        return self.norm(queries + self.dropout(out)), weights


class _TwoStreamLayer(FusionLayer):
    """One attention sublayer per direction, then a feed-forward per stream.

    Each stream is the query of one direction; every direction reads the states from
    before the layer (vilbert's BertBiAttention computes both co-attention directions from
    the pre-update states), in the order ``directions`` lists them. A sublayer projects to
    ``hidden`` (None: its query stream's width).
    """

    #: direction -> attribute name of its sublayer, where they differ (the checkpoint keys).
    sublayer_names: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        heads: int,
        ffn_ratio: float,
        dropout: float,
        attn_dropout: float,
        *,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        dims = {TEXT: text_dim, IMAGE: image_dim}
        # Sublayers in direction order, then the feed-forwards: the parameter (and RNG)
        # order of every checkpoint so far.
        for direction, (q, k) in self.directions.items():
            sublayer = AttentionSublayer(
                dims[q], dims[k], hidden or dims[q], heads, dropout, attn_dropout
            )
            self.add_module(self.sublayer_names.get(direction, direction), sublayer)
        self.text_ffn = FeedForward(text_dim, int(text_dim * ffn_ratio), dropout)
        self.image_ffn = FeedForward(image_dim, int(image_dim * ffn_ratio), dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int, image_dim: int) -> _TwoStreamLayer:
        c, hidden = config, cls.hidden_size(config)
        args = (c.num_heads, c.ffn_ratio, c.dropout, c.attention_dropout)
        return cls(text_dim, image_dim, *args, hidden=hidden)

    @classmethod
    def hidden_size(cls, config: ModelConfig) -> int | None:
        """The width queries, keys and values are projected to (None: the query stream's)."""
        return None

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> FusionOutput:
        states = {TEXT: text, IMAGE: image}
        key_masks = {TEXT: text_mask, IMAGE: None}  # every image token is real
        new, attn = {}, {}
        for direction, (q, k) in self.directions.items():
            sublayer = getattr(self, self.sublayer_names.get(direction, direction))
            new[q], attn[direction] = sublayer(states[q], states[k], key_masks[k], need_weights)
        return self.text_ffn(new[TEXT]), self.image_ffn(new[IMAGE]), attn if need_weights else None


@register_fusion_layer
class SelfAttentionLayer(_TwoStreamLayer):
    """One transformer layer per stream; the streams do not see each other."""

    kind = SELF_ATTENTION
    title = "self-attention"
    directions = declare_directions(text_self=(TEXT, TEXT), image_self=(IMAGE, IMAGE))
    sublayer_names = MappingProxyType({"text_self": "text_attn", "image_self": "image_attn"})


@register_fusion_layer
class CoAttentionLayer(_TwoStreamLayer):
    """Text queries attend to image keys/values and image queries to text keys/values,
    at the width ``coattention_size`` (vilbert's bi_hidden)."""

    kind = COATTENTION
    title = "co-attention"
    directions = declare_directions(text_to_image=(TEXT, IMAGE), image_to_text=(IMAGE, TEXT))

    @classmethod
    def hidden_size(cls, config: ModelConfig) -> int | None:
        return config.coattention_size


@register_fusion_layer
class SingleStreamLayer(FusionLayer):
    """ViLT-style: one transformer layer over the concatenated text tokens and patches.

    Both parts must already have the same width (the ``single_stream`` variant projects the
    image stream). Returns the text part and the image part separately so analysis treats
    them as the two streams; its one attention map is over the joint sequence.
    """

    kind = SINGLE_STREAM
    title = "single-stream"
    directions = declare_directions(joint=(JOINT, JOINT))

    def __init__(
        self, dim: int, heads: int, ffn_ratio: float, dropout: float, attn_dropout: float
    ) -> None:
        super().__init__()
        self.attn = AttentionSublayer(dim, dim, dim, heads, dropout, attn_dropout)
        self.ffn = FeedForward(dim, int(dim * ffn_ratio), dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int, image_dim: int) -> SingleStreamLayer:
        if text_dim != image_dim:
            raise ValueError(
                f"fusion layer {SINGLE_STREAM!r} needs both streams at one width, got text "
                f"{text_dim} and image {image_dim} (variant 'single_stream' projects the image)"
            )
        c = config
        return cls(text_dim, c.num_heads, c.ffn_ratio, c.dropout, c.attention_dropout)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> FusionOutput:
        joint = torch.cat([text, image], dim=1)  # (B, T + I, D)
        image_mask = text_mask.new_ones(image.shape[:2])
        joint, weights = self.attn(
            joint, joint, torch.cat([text_mask, image_mask], 1), need_weights
        )
        parts = split_joint(self.ffn(joint), text.shape[1], dim=1)
        attn = {JOINT: weights} if need_weights else None
        return parts[TEXT], parts[IMAGE], attn

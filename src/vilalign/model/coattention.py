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

from typing import TYPE_CHECKING

import torch
from torch import nn

from vilalign.model.attention import MultiHeadAttention
from vilalign.model.fusion import (
    IMAGE,
    JOINT,
    TEXT,
    Attentions,
    FusionLayer,
    declare_directions,
    register_fusion_layer,
    split_joint,
)

if TYPE_CHECKING:
    from vilalign.config import ModelConfig

# The layer kinds: the one place each name is spelt.
COATTENTION = "coattention"
SELF_ATTENTION = "self_attention"
SINGLE_STREAM = "single_stream"

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
    """An attention sublayer per stream (``attend``), then a feed-forward per stream."""

    def _add_feed_forwards(
        self, text_dim: int, image_dim: int, ffn_ratio: float, dropout: float
    ) -> None:
        # Created after the attention sublayers: the parameter (and RNG) order of checkpoints.
        self.text_ffn = FeedForward(text_dim, int(text_dim * ffn_ratio), dropout)
        self.image_ffn = FeedForward(image_dim, int(image_dim * ffn_ratio), dropout)

    def attend(
        self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """Both streams after attention, and the weights in the order of ``directions``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Attentions | None]:
        text, image, weights = self.attend(text, image, text_mask, need_weights)
        attn = dict(zip(self.directions, weights, strict=True)) if need_weights else None
        return self.text_ffn(text), self.image_ffn(image), attn


@register_fusion_layer
class SelfAttentionLayer(_TwoStreamLayer):
    """One transformer layer per stream; the streams do not see each other."""

    kind = SELF_ATTENTION
    title = "self-attention"
    directions = declare_directions(text_self=(TEXT, TEXT), image_self=(IMAGE, IMAGE))

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        heads: int,
        ffn_ratio: float,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.text_attn = AttentionSublayer(
            text_dim, text_dim, text_dim, heads, dropout, attn_dropout
        )
        self.image_attn = AttentionSublayer(
            image_dim, image_dim, image_dim, heads, dropout, attn_dropout
        )
        self._add_feed_forwards(text_dim, image_dim, ffn_ratio, dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int, image_dim: int) -> SelfAttentionLayer:
        c = config
        return cls(text_dim, image_dim, c.num_heads, c.ffn_ratio, c.dropout, c.attention_dropout)

    def attend(
        self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        text, w_text = self.text_attn(text, text, text_mask, need_weights)
        image, w_image = self.image_attn(image, image, None, need_weights)
        return text, image, [w_text, w_image]


@register_fusion_layer
class CoAttentionLayer(_TwoStreamLayer):
    """Text queries attend to image keys/values and image queries to text keys/values."""

    kind = COATTENTION
    title = "co-attention"
    directions = declare_directions(text_to_image=(TEXT, IMAGE), image_to_text=(IMAGE, TEXT))

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        hidden: int,
        heads: int,
        ffn_ratio: float,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.text_to_image = AttentionSublayer(
            text_dim, image_dim, hidden, heads, dropout, attn_dropout
        )
        self.image_to_text = AttentionSublayer(
            image_dim, text_dim, hidden, heads, dropout, attn_dropout
        )
        self._add_feed_forwards(text_dim, image_dim, ffn_ratio, dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int, image_dim: int) -> CoAttentionLayer:
        c = config
        return cls(
            text_dim,
            image_dim,
            c.coattention_size,
            c.num_heads,
            c.ffn_ratio,
            c.dropout,
            c.attention_dropout,
        )

    def attend(
        self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        # Both directions read the pre-update states (vilbert BertBiAttention).
        new_text, w_ti = self.text_to_image(text, image, None, need_weights)
        new_image, w_it = self.image_to_text(image, text, text_mask, need_weights)
        return new_text, new_image, [w_ti, w_it]


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
    ) -> tuple[torch.Tensor, torch.Tensor, Attentions | None]:
        joint = torch.cat([text, image], dim=1)  # (B, T + I, D)
        image_mask = text_mask.new_ones(image.shape[:2])
        joint, weights = self.attn(
            joint, joint, torch.cat([text_mask, image_mask], 1), need_weights
        )
        parts = split_joint(self.ffn(joint), text.shape[1], dim=1)
        attn = {JOINT: weights} if need_weights else None
        return parts[TEXT], parts[IMAGE], attn

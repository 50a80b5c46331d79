"""Fusion layers: the ViLBERT co-attention block and the per-stream self-attention layer.

Both take and return ``(text, image)`` so the model stacks them in any order. Layout
follows vilbert-multi-task's ``BertConnectionLayer``: each stream's queries attend to
the other stream's keys/values (both directions computed from the states *before*
either is updated), then residual + LayerNorm, then a per-stream feed-forward with
residual + LayerNorm. Unlike LXMERT, the two directions have their own weights and
both directions' attention maps are returned.
"""

from __future__ import annotations

import torch
from torch import nn

from vilalign.model.attention import MultiHeadAttention

Attentions = dict[str, torch.Tensor]


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


class SelfAttentionLayer(nn.Module):
    """One transformer layer per stream; the streams do not see each other."""

    is_coattention = False
    kind = "self_attention"

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
        self.text_ffn = FeedForward(text_dim, int(text_dim * ffn_ratio), dropout)
        self.image_ffn = FeedForward(image_dim, int(image_dim * ffn_ratio), dropout)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Attentions | None]:
        text, w_text = self.text_attn(text, text, text_mask, need_weights)
        image, w_image = self.image_attn(image, image, None, need_weights)
        attn = {"text_self": w_text, "image_self": w_image} if need_weights else None
        return self.text_ffn(text), self.image_ffn(image), attn


class CoAttentionLayer(nn.Module):
    """Text queries attend to image keys/values and image queries to text keys/values."""

    is_coattention = True
    kind = "coattention"

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
        self.text_ffn = FeedForward(text_dim, int(text_dim * ffn_ratio), dropout)
        self.image_ffn = FeedForward(image_dim, int(image_dim * ffn_ratio), dropout)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Attentions | None]:
        # Both directions read the pre-update states (vilbert BertBiAttention).
        new_text, w_ti = self.text_to_image(text, image, None, need_weights)
        new_image, w_it = self.image_to_text(image, text, text_mask, need_weights)
        attn = {"text_to_image": w_ti, "image_to_text": w_it} if need_weights else None
        return self.text_ffn(new_text), self.image_ffn(new_image), attn


class SingleStreamLayer(nn.Module):
    """ViLT-style: one transformer layer over the concatenated text tokens and patches.

    Both parts must already have the same width. Returns the text part and the image
    part separately so analysis treats them as the two streams.
    """

    is_coattention = False
    kind = "single_stream"

    def __init__(
        self, dim: int, heads: int, ffn_ratio: float, dropout: float, attn_dropout: float
    ) -> None:
        super().__init__()
        self.attn = AttentionSublayer(dim, dim, dim, heads, dropout, attn_dropout)
        self.ffn = FeedForward(dim, int(dim * ffn_ratio), dropout)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Attentions | None]:
        T = text.shape[1]
        joint = torch.cat([text, image], dim=1)  # (B, T + Pi, D)
        image_mask = text_mask.new_ones(image.shape[:2])
        joint, weights = self.attn(
            joint, joint, torch.cat([text_mask, image_mask], 1), need_weights
        )
        joint = self.ffn(joint)
        attn = {"joint": weights} if need_weights else None
        return joint[:, :T], joint[:, T:], attn

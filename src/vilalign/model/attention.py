"""One multi-head attention module for self- and cross-attention, with two paths.

As in timm's ``Attention``: the fused path calls ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels on GPU); the explicit path computes
``softmax(q @ kᵀ / √d)`` and returns the weights. Training uses the fused path; the
explicit path runs only when analysis asks for weights (``need_weights=True``) or
when ``fused=False``. A test asserts the two paths agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def key_padding_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, Tk) 1/0 mask → (B, 1, 1, Tk) bool mask for SDPA (True = attend)."""
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Queries from one sequence, keys/values from another (the same one for self-attention).

    ``query_dim`` and ``key_dim`` may differ (text and image streams of different widths);
    queries, keys and values are projected to ``hidden_size`` and the output back to
    ``query_dim``.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_size: int,
        num_heads: int,
        attention_dropout: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.fused = fused
        self.attention_dropout = attention_dropout
        self.query = nn.Linear(query_dim, hidden_size)
        self.key = nn.Linear(key_dim, hidden_size)
        self.value = nn.Linear(key_dim, hidden_size)
        self.out = nn.Linear(hidden_size, query_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``queries`` (B, Tq, Dq) to ``keys`` (B, Tk, Dk).

        ``key_mask`` (B, Tk): 1 for real keys, 0 for padding. Returns the output
        (B, Tq, Dq) and, when ``need_weights``, the weights (B, H, Tq, Tk).
        """
        q = self._heads(self.query(queries))  # (B, H, Tq, Dh)
        k = self._heads(self.key(keys))  # (B, H, Tk, Dh)
        v = self._heads(self.value(keys))  # (B, H, Tk, Dh)
        mask = key_padding_bias(key_mask)  # (B, 1, 1, Tk) or None
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if self.fused and not need_weights:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, Tq, Tk)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            # Dropout applies to what is multiplied with the values; the weights returned
            # are the pre-dropout ones, i.e. the model's attention distribution.
            ctx = F.dropout(weights, p=dropout, training=self.training) @ v  # (B, H, Tq, Dh)
        B, _, Tq, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(B, Tq, -1)  # (B, Tq, H*Dh)
        return self.out(ctx), weights

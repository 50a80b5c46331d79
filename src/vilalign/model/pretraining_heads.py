"""Pretraining heads: masked-token prediction, alignment prediction, MIM projection.

Heads only map states to scores; the losses live in ``vilalign.train.objectives``.
"""

from __future__ import annotations

import torch
from torch import nn


class MlmHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then a decoder tied to the word embeddings.

    Tying shares the (V, D) matrix with the text encoder's input embeddings (as BERT does),
    so the head adds only D*D + V parameters and the embeddings learn from the MLM signal.
    """

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        vocab, dim = word_embeddings.weight.shape
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = word_embeddings.weight  # tied, not copied
        nn.init.zeros_(self.decoder.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., D) text states → (..., V) vocabulary logits."""
        return self.decoder(self.transform(states))


class AlignmentHead(nn.Module):
    """One logit on the fused vector: does the caption describe the image?"""

    def __init__(self, fused_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(fused_dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, F) → (B,) logits."""
        return self.linear(fused).squeeze(-1)


class MimProjection(nn.Module):
    """Predictor on the masked view's patch states before the contrastive MIM loss.

    Only the masked (online) view passes through it: the target view is the encoder's own
    states under stop-gradient, so the predictor gives the online side room to differ from
    the target without collapsing the encoder states onto it.
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., D) → (..., D)."""
        return self.net(states)

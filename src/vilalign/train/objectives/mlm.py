"""Masked language modelling: predict the masked words from the text stream's final states."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vilalign.data.masking import IGNORE_INDEX
from vilalign.data.types import Batch
from vilalign.train.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    PretrainingViews,
    zero_loss,
)


class MlmConfig(ObjectiveConfig):
    probability: float = Field(0.15, gt=0, lt=1, description="Share of non-special tokens.")
    on_negatives: bool = Field(
        False,
        description="Also predict masked words of AP negatives; off because a caption that "
        "does not describe the image teaches the text stream to ignore the image.",
    )


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


class MaskedLanguageModelling(Objective):
    """Cross-entropy on the masked tokens, scored by a head tied to the word embeddings."""

    name = "mlm"
    config_class = MlmConfig
    batch_fields = ("mlm_labels",)

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.head = MlmHead(word_embeddings)

    @classmethod
    def from_config(cls, model: Any, cfg: MlmConfig) -> MaskedLanguageModelling:
        return cls(model.text_word_embeddings)

    def term(self, views: PretrainingViews, batch: Batch) -> ObjectiveOutput:
        return self(views.clean.text_sequence, batch.mlm_labels)

    def forward(self, text_states: torch.Tensor, labels: torch.Tensor) -> ObjectiveOutput:
        """``text_states`` (B, T, D), ``labels`` (B, T) with -100 where nothing is predicted."""
        chosen = labels != IGNORE_INDEX
        if not chosen.any():
            return ObjectiveOutput(zero_loss(text_states))
        # Score only the chosen positions: the V-wide decoder is the costliest part.
        logits = self.head(text_states[chosen]).float()  # (N, V)
        target = labels[chosen]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc.detach()})

"""Alignment prediction: does the caption describe the image? One logit on the fused vector."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vilalign.data.types import Batch
from vilalign.train.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    PretrainingViews,
)


class ApConfig(ObjectiveConfig):
    negative_ratio: float = Field(0.5, ge=0, le=1, description="Share of mismatched pairs.")


class AlignmentHead(nn.Module):
    """One logit on the fused vector: does the caption describe the image?"""

    def __init__(self, fused_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(fused_dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, F) → (B,) logits."""
        return self.linear(fused).squeeze(-1)


class AlignmentPrediction(Objective):
    """Binary cross-entropy on one logit from the fused vector: is this the image's caption?"""

    name = "ap"
    config_class = ApConfig
    batch_fields = ("ap_labels",)
    monitor = "accuracy"

    def __init__(self, fused_dim: int) -> None:
        super().__init__()
        self.head = AlignmentHead(fused_dim)

    @classmethod
    def from_config(cls, model: Any, cfg: ApConfig) -> AlignmentPrediction:
        return cls(model.fused_size)

    def term(self, views: PretrainingViews, batch: Batch) -> ObjectiveOutput:
        return self(views.clean.fused, batch.ap_labels)

    def forward(self, fused: torch.Tensor, labels: torch.Tensor) -> ObjectiveOutput:
        logits = self.head(fused).float()  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        acc = ((logits > 0).long() == labels).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc.detach()})

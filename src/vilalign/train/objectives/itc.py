"""Image-text contrastive: CLIP's symmetric InfoNCE between the pooled text and image vectors."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from vilalign.data.types import Batch
from vilalign.distributed import is_distributed
from vilalign.train.distributed import gathered_symmetric_info_nce
from vilalign.train.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    PretrainingViews,
    zero_loss,
)


class ItcConfig(ObjectiveConfig):
    weight: float = Field(
        0.0,
        ge=0,
        description="Image-text contrastive term on the pooled vectors; off by default because "
        "the original work found it swamps the other terms.",
    )
    temperature: float = Field(0.07, gt=0)
    gather_negatives: bool = Field(
        True, description="DDP: the pairs of every rank as negatives (CLIP's global batch)."
    )


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over cosine similarities: row i of ``query`` should pick row i of ``keys``.

    (N, D) × (N, D) → scalar; every other row is a negative.
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    logits = q @ k.T / temperature  # (N, N)
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's loss: the mean of a→b and b→a InfoNCE."""
    return 0.5 * (info_nce(a, b, temperature) + info_nce(b, a, temperature))


class ImageTextContrastive(Objective):
    """Symmetric InfoNCE between pooled text and pooled image vectors of matching pairs.

    Under DDP with ``gather`` (the default), the pairs of every rank are negatives, as in
    CLIP: the loss equals the single-process loss on the global batch. Reads ``ap_labels``
    when the batch has them, to leave out the mismatched pairs.
    """

    name = "itc"
    config_class = ItcConfig

    def __init__(self, temperature: float, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    @classmethod
    def from_config(cls, model: Any, cfg: ItcConfig) -> ImageTextContrastive:
        return cls(cfg.temperature, cfg.gather_negatives)

    def term(self, views: PretrainingViews, batch: Batch) -> ObjectiveOutput:
        return self(views.clean.pooled_text, views.clean.pooled_image, batch.ap_labels)

    def forward(
        self, pooled_text: torch.Tensor, pooled_image: torch.Tensor, ap_labels: torch.Tensor | None
    ) -> ObjectiveOutput:
        # Mismatched (AP-negative) pairs have no partner in the batch: leave them out.
        keep = ap_labels.bool() if ap_labels is not None else slice(None)
        text, image = pooled_text[keep], pooled_image[keep]
        if self.gather and is_distributed():
            return ObjectiveOutput(gathered_symmetric_info_nce(text, image, self.temperature))
        if len(text) < 2:
            return ObjectiveOutput(zero_loss(pooled_text))
        return ObjectiveOutput(symmetric_info_nce(text, image, self.temperature))

"""Contrastive masked image modelling: the masked view's patch states predict the unmasked ones."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vilalign.data.types import Batch
from vilalign.distributed import is_distributed
from vilalign.model.fusion import IMAGE
from vilalign.train.distributed import gathered_info_nce
from vilalign.train.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    PretrainingViews,
    zero_loss,
)


class MimConfig(ObjectiveConfig):
    ratio: float = Field(0.4, gt=0, lt=1, description="Share of image patches masked.")
    pattern: Literal["random", "block"] = "random"
    temperature: float = Field(0.1, gt=0)
    gather_negatives: bool = Field(
        False,
        description="DDP: every rank's masked patches as negatives too. Off by default: each "
        "rank already has batch x masked patches (thousands) of negatives, and gathering "
        "multiplies the logits' memory by the number of ranks.",
    )


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


class ContrastiveMIM(Objective):
    """InfoNCE between the masked view's patch states and the unmasked view's, at masked patches.

    Positive: the same patch of the same image in the unmasked view. Negatives: every other
    masked patch in the batch (other positions and other images). The target is detached
    (stop-gradient): it is what the online view should predict, not something to move.
    Under DDP with ``gather``, the masked patches of every rank are negatives too.
    """

    name = "mim"
    config_class = MimConfig
    batch_fields = ("mim_mask",)
    masked_image_field = "mim_mask"

    def __init__(self, dim: int, temperature: float, gather: bool = False) -> None:
        super().__init__()
        self.projection = MimProjection(dim)
        self.temperature = temperature
        self.gather = gather

    @classmethod
    def from_config(cls, model: Any, cfg: MimConfig) -> ContrastiveMIM:
        # The width of the image states the fusion layers return (a single-stream model
        # projects patches to the text width).
        return cls(model.stream_widths[IMAGE], cfg.temperature, cfg.gather_negatives)

    def term(self, views: PretrainingViews, batch: Batch) -> ObjectiveOutput:
        target = views.clean.image_sequence
        return self(views.masked_image, target, batch.mim_mask, views.num_prefix_tokens)

    def forward(
        self,
        masked_states: torch.Tensor,
        target_states: torch.Tensor,
        mim_mask: torch.Tensor,
        num_prefix_tokens: int = 1,
    ) -> ObjectiveOutput:
        """States (B, prefix + P, D) of both views; ``mim_mask`` (B, P) True where masked."""
        # A rank with nothing masked still joins the gather (the others wait for it).
        if not mim_mask.any() and not (self.gather and is_distributed()):
            return ObjectiveOutput(zero_loss(masked_states))
        online = self.projection(masked_states[:, num_prefix_tokens:][mim_mask])  # (N, D)
        target = target_states[:, num_prefix_tokens:][mim_mask].detach()  # (N, D)
        return self.loss(online, target)

    def loss(self, online: torch.Tensor, target: torch.Tensor) -> ObjectiveOutput:
        """InfoNCE of already selected (N, D) rows; ``target`` receives no gradient."""
        target = target.detach()
        loss = gathered_info_nce(online, target, self.temperature, self.gather)
        if len(online) == 0:  # only under DDP: a rank with nothing masked
            return ObjectiveOutput(loss)
        with torch.no_grad():  # accuracy among this rank's own patches
            sims = F.normalize(online.float(), dim=-1) @ F.normalize(target.float(), dim=-1).T
            acc = (sims.argmax(-1) == torch.arange(len(sims), device=sims.device)).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc})

"""Pretraining objectives, each its own module: MLM, contrastive MIM, AP, image-text contrastive.

Every objective returns an :class:`ObjectiveOutput` — its loss and the figures to log
under its own name — and :class:`PretrainingObjectives` combines any subset with
configurable weights. The original work found that one term (the contrastive one) can
swamp the others, so every term is logged separately, weighted and unweighted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vilalign.data.masking import IGNORE_INDEX
from vilalign.distributed import is_distributed
from vilalign.model.pretraining_heads import AlignmentHead, MimProjection, MlmHead
from vilalign.train.distributed import gathered_info_nce, gathered_symmetric_info_nce


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, unweighted
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


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


def _zero(like: torch.Tensor) -> torch.Tensor:
    # A zero that stays in the graph, so backward works when a batch has nothing to predict.
    return like.sum() * 0.0


class MaskedLanguageModelling(nn.Module):
    """Cross-entropy on the masked tokens, scored by a head tied to the word embeddings."""

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.head = MlmHead(word_embeddings)

    def forward(self, text_states: torch.Tensor, labels: torch.Tensor) -> ObjectiveOutput:
        """``text_states`` (B, T, D), ``labels`` (B, T) with -100 where nothing is predicted."""
        chosen = labels != IGNORE_INDEX
        if not chosen.any():
            return ObjectiveOutput(_zero(text_states))
        # Score only the chosen positions: the V-wide decoder is the costliest part.
        logits = self.head(text_states[chosen]).float()  # (N, V)
        target = labels[chosen]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc.detach()})


class ContrastiveMIM(nn.Module):
    """InfoNCE between the masked view's patch states and the unmasked view's, at masked patches.

    Positive: the same patch of the same image in the unmasked view. Negatives: every other
    masked patch in the batch (other positions and other images). The target is detached
    (stop-gradient): it is what the online view should predict, not something to move.
    Under DDP with ``gather``, the masked patches of every rank are negatives too.
    """

    def __init__(self, dim: int, temperature: float, gather: bool = False) -> None:
        super().__init__()
        self.projection = MimProjection(dim)
        self.temperature = temperature
        self.gather = gather

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
            return ObjectiveOutput(_zero(masked_states))
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


class AlignmentPrediction(nn.Module):
    """Binary cross-entropy on one logit from the fused vector: is this the image's caption?"""

    def __init__(self, fused_dim: int) -> None:
        super().__init__()
        self.head = AlignmentHead(fused_dim)

    def forward(self, fused: torch.Tensor, labels: torch.Tensor) -> ObjectiveOutput:
        logits = self.head(fused).float()  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        acc = ((logits > 0).long() == labels).float().mean()
        return ObjectiveOutput(loss, {"accuracy": acc.detach()})


class ImageTextContrastive(nn.Module):
    """Symmetric InfoNCE between pooled text and pooled image vectors of matching pairs.

    Under DDP with ``gather`` (the default), the pairs of every rank are negatives, as in
    CLIP: the loss equals the single-process loss on the global batch.
    """

    def __init__(self, temperature: float, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(
        self, pooled_text: torch.Tensor, pooled_image: torch.Tensor, ap_labels: torch.Tensor | None
    ) -> ObjectiveOutput:
        # Mismatched (AP-negative) pairs have no partner in the batch: leave them out.
        keep = ap_labels.bool() if ap_labels is not None else slice(None)
        text, image = pooled_text[keep], pooled_image[keep]
        if self.gather and is_distributed():
            return ObjectiveOutput(gathered_symmetric_info_nce(text, image, self.temperature))
        if len(text) < 2:
            return ObjectiveOutput(_zero(pooled_text))
        return ObjectiveOutput(symmetric_info_nce(text, image, self.temperature))

"""Pooling, fusion of the two pooled vectors, and the downstream task head."""

from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("product", "concat", "sum")


POOLINGS = ("cls", "mean")


class Pooler(nn.Module):
    """First token (or the mean of the real tokens) → linear → ReLU.

    ``cls`` is vilbert's BertTextPooler / BertImagePooler. ``mean`` averages the states of the
    real tokens (``mask`` 1) instead: every word reaches the fused vector directly, which a
    small model trained from scratch needs to tie a question's words to the image (see
    configs/finetune_easyvqa_tiny.yaml).
    """

    def __init__(self, dim: int, pooled_size: int, mode: str = "cls") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling: unknown mode {mode!r} (allowed: {', '.join(POOLINGS)})")
        self.mode = mode
        self.dense = nn.Linear(dim, pooled_size)
        self.act = nn.ReLU()

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.act(self.dense(self.summary(states, mask)))  # (B, pooled)

    def summary(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, D) vector the pooler reads: the first token or the masked mean."""
        if self.mode == "cls":
            return states[:, 0]
        if mask is None:
            return states.mean(dim=1)
        weights = mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def fuse(pooled_text: torch.Tensor, pooled_image: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine the two pooled vectors; ViLBERT's default is the elementwise product."""
    if mode == "product":
        return pooled_text * pooled_image
    if mode == "sum":
        return pooled_text + pooled_image
    if mode == "concat":
        return torch.cat([pooled_text, pooled_image], dim=-1)
    if mode == "text":  # unimodal baselines
        return pooled_text
    if mode == "image":
        return pooled_image
    raise ValueError(f"fusion: unknown mode {mode!r} (allowed: {', '.join(FUSIONS)})")


def fused_size(pooled_size: int, mode: str) -> int:
    return 2 * pooled_size if mode == "concat" else pooled_size


class ClassificationHead(nn.Module):
    """Two-layer MLP on the fused vector (vilbert-multi-task's SimpleClassifier)."""

    def __init__(self, in_dim: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, 2 * in_dim),
            nn.GELU(),
            nn.LayerNorm(2 * in_dim, eps=1e-12),
            nn.Linear(2 * in_dim, num_labels),
        )

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

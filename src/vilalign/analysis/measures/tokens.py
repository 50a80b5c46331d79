"""Token-level measures: text tokens against image patches of the same sample.

Registered with ``level=TOKENS``: they are called with token states and masks,
``measure(text B×T×D, image B×P×D, text_mask B×T, image_mask B×P)``, not with pooled
rows, and the alignment table runs them on the ``tokens`` view.
"""

from __future__ import annotations

import math

import torch

from vilalign.analysis.measures import budget
from vilalign.analysis.measures.linalg import DTYPE, Tensor
from vilalign.analysis.measures.registry import TOKENS, register


def _check_tokens(t: Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 3:
        raise ValueError(f"{name} must be a B×T×D tensor, got {getattr(t, 'shape', t)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def _mask_or_ones(mask: Tensor | None, t: Tensor, name: str) -> Tensor:
    if mask is None:
        return torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
    if tuple(mask.shape) != tuple(t.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(t.shape[:2])}")
    mask = mask.to(device=t.device).bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: some sample has no real tokens")
    return mask


def token_maxsim(
    text: Tensor,
    image: Tensor,
    text_mask: Tensor | None = None,
    image_mask: Tensor | None = None,
    direction: str = "text_to_patch",
) -> float:
    """Token-level max-similarity: each real text token's best cosine over the same
    sample's real patches (``text_to_patch``), or each patch's best over tokens
    (``patch_to_text``), averaged over all real query tokens of the batch.

    ``text``: B×T×D, ``image``: B×P×D, masks B×T / B×P (1 = real; default all real).
    """
    _check_tokens(text, "text")
    _check_tokens(image, "image")
    if text.shape[0] != image.shape[0] or text.shape[2] != image.shape[2]:
        raise ValueError(f"text {tuple(text.shape)} and image {tuple(image.shape)} need equal B, D")
    tm = _mask_or_ones(text_mask, text, "text_mask")
    im = _mask_or_ones(image_mask, image, "image_mask")
    if direction == "patch_to_text":
        text, image, tm, im = image, text, im, tm
    elif direction != "text_to_patch":
        raise ValueError(f"direction must be 'text_to_patch' or 'patch_to_text', got {direction!r}")
    # Samples in blocks (float64 queries, keys and B×Tq×Tk similarities of one block at a
    # time), so memory follows the budget, not the number of samples.
    tq, tk, d = text.shape[1], image.shape[1], text.shape[2]
    row_bytes = ((tq + tk) * d + tq * tk) * 8 * 2
    step = budget.block_rows(row_bytes, text.shape[0], "token max-similarity")
    total, count = 0.0, int(tm.sum())
    for a in range(0, text.shape[0], step):
        q = torch.nn.functional.normalize(text[a : a + step].to(DTYPE), dim=-1)
        k = torch.nn.functional.normalize(image[a : a + step].to(DTYPE), dim=-1)
        sims = torch.bmm(q, k.transpose(1, 2))  # (b, Tq, Tk)
        sims = sims.masked_fill(~im[a : a + step, None, :], -math.inf)
        best = sims.max(dim=2).values  # (b, Tq)
        total += float(best[tm[a : a + step]].sum())
    return total / count


@register("maxsim_text_to_patch", level=TOKENS, min_n=1)
def maxsim_text_to_patch(
    text: Tensor, image: Tensor, text_mask: Tensor | None = None, image_mask: Tensor | None = None
) -> float:
    """Each real text token's best cosine over its sample's real patches, averaged."""
    return token_maxsim(text, image, text_mask, image_mask, "text_to_patch")


@register("maxsim_patch_to_text", level=TOKENS, min_n=1)
def maxsim_patch_to_text(
    text: Tensor, image: Tensor, text_mask: Tensor | None = None, image_mask: Tensor | None = None
) -> float:
    """Each real patch's best cosine over its sample's real text tokens, averaged."""
    return token_maxsim(text, image, text_mask, image_mask, "patch_to_text")

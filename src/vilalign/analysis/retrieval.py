"""Image–text retrieval recall as a functional alignment measure.

Representational measures (CKA, k-NN overlap, ...) ask whether the two streams
*organise* samples alike; retrieval asks whether a text finds *its* image by similarity
and vice versa. ``recall@K`` is the fraction of queries whose target is among the K most
similar candidates:

- text→image (``t2i``): every caption is a query; its own image is the one target;
- image→text (``i2t``): every image is a query; a hit if *any* of its captions is in
  the top K (the usual definition for COCO/Flickr30k with 5 captions per image).

The similarity matrix has one row per caption and one column per image, so it need not
be square (5 captions per image give 5·I × I). Values are fractions in [0, 1], not
percentages.

**Ties.** Exactly equal scores (constant or collapsed representations) are ranked by
default by their *expected* outcome under a uniformly random order of the tied
candidates, so a constant similarity gives the chance level K/I instead of 0 or 1;
``ties="optimistic"`` / ``"pessimistic"`` put the targets before / after every candidate
they tie with.

**Caveat for co-attention layers.** Representations are collected on (image, caption)
pairs, and at a co-attention layer each stream has already attended to the other: an
image's state there carries information about the captions it was paired with. Recall
at those layers therefore overstates how well unpaired streams would retrieve; at
self-attention (and encoder) layers the two streams are independent. Compare layers of
the same kind, or collect the image stream with unrelated text if this matters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch

from vilalign.analysis.align import RunInfo, _row
from vilalign.analysis.collect import Representations
from vilalign.analysis.report import COLUMNS

log = logging.getLogger(__name__)

Ties = Literal["expected", "optimistic", "pessimistic"]
DEFAULT_KS = (1, 5, 10)
DIRECTIONS = ("t2i", "i2t")


# ---------------------------------------------------------------------- grouping by image


@dataclass(frozen=True)
class CaptionGroups:
    """Which image each row (caption) belongs to, images in order of first appearance."""

    images: list[str]
    caption_image: torch.Tensor  # (N,) long: row → index into ``images``

    @property
    def counts(self) -> torch.Tensor:
        """(I,) captions per image."""
        return torch.bincount(self.caption_image, minlength=len(self.images))


def caption_groups(image_ids: Sequence[str]) -> CaptionGroups:
    """Group rows by the image they show (``Representations.image_ids``; rows of one image
    need not be adjacent)."""
    index: dict[str, int] = {}
    rows = [index.setdefault(i, len(index)) for i in image_ids]
    return CaptionGroups(list(index), torch.tensor(rows, dtype=torch.long))


def average_over_images(x: torch.Tensor, groups: CaptionGroups) -> torch.Tensor:
    """(N, D) rows → (I, D): the mean of each image's rows (float64 sum, then back)."""
    if x.shape[0] != groups.caption_image.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} rows but there are {groups.caption_image.shape[0]} ids"
        )
    sums = torch.zeros(len(groups.images), x.shape[1], dtype=torch.float64)
    sums.index_add_(0, groups.caption_image, x.double())
    return (sums / groups.counts[:, None]).to(x.dtype)


def averaged_captions(
    reps: Representations, layer: str, view: str = "cls", stream: str = "text"
) -> tuple[torch.Tensor, list[str]]:
    """One ``stream`` representation per image: the mean over its captions' rows.

    Returns (I×D, image ids in order of first appearance in ``reps.image_ids``).
    """
    groups = caption_groups(reps.image_ids)
    return average_over_images(reps.get(layer, stream, view), groups), groups.images


def average_representations(reps: Representations) -> Representations:
    """One row per image: each pooled view of both streams averaged over the image's
    caption rows (through co-attention the image stream depends on the caption too).

    The ids become the image ids. Token states (different lengths) are not averaged:
    ask for pooled views only.
    """
    if reps.tokens:
        raise ValueError("averaging captions: token states cannot be averaged; drop 'tokens'")
    groups = caption_groups(reps.image_ids)
    pooled = {key: average_over_images(reps.get(*key), groups) for key in reps.pooled}
    return Representations(
        ids=list(groups.images),
        image_ids=list(groups.images),
        layers=reps.layers,
        views=reps.views,
        pooled=pooled,
        num_prefix_tokens=reps.num_prefix_tokens,
    )


# ---------------------------------------------------------------------- recall


def cosine_similarity(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(N_t, D) × (N_i, D) → (N_t, N_i) cosine similarities, in float64."""
    if text.ndim != 2 or image.ndim != 2 or text.shape[1] != image.shape[1]:
        raise ValueError(
            f"need N×D text and image with equal D, got {tuple(text.shape)} "
            f"and {tuple(image.shape)}"
        )
    t = torch.nn.functional.normalize(text.double(), dim=1)
    i = torch.nn.functional.normalize(image.double(), dim=1)
    return t @ i.T


def _check(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int]) -> None:
    if similarity.ndim != 2 or min(similarity.shape) < 2:
        raise ValueError(
            f"similarity: need at least 2 captions × 2 images, got {tuple(similarity.shape)}"
        )
    if not torch.isfinite(similarity).all():
        raise ValueError("similarity: contains NaN or infinite values")
    if caption_image.shape != (similarity.shape[0],):
        raise ValueError(
            f"caption_image: need one image index per row ({similarity.shape[0]}),"
            f" got shape {tuple(caption_image.shape)}"
        )
    n_images = similarity.shape[1]
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise ValueError(f"caption_image: indices must lie in [0, {n_images})")
    captionless = int((torch.bincount(caption_image, minlength=n_images) == 0).sum())
    if captionless:
        raise ValueError(
            f"caption_image: {captionless} image(s) have no caption, so "
            "image→text recall is undefined for them"
        )
    if not ks or min(ks) < 1:
        raise ValueError(f"ks: need positive cut-offs, got {tuple(ks)}")


def _hit_rate(similarity: torch.Tensor, target: torch.Tensor, k: int, ties: Ties) -> torch.Tensor:
    """Per query row: the probability that a target is among the top ``k`` columns.

    ``target`` is a bool mask of the same shape (at least one True per row). With ``g``
    non-targets scoring above the best target, ``t`` non-targets and ``m`` targets tied
    with it, a random order of the tied ones puts a target in the top k with probability
    1 − C(t, x)/C(t+m, x), x = k − g (0 if x ≤ 0, 1 if x > t).
    """
    best = similarity.masked_fill(~target, float("-inf")).amax(dim=1, keepdim=True)
    above = ((similarity > best) & ~target).sum(1).double()
    tied = ((similarity == best) & ~target).sum(1).double()
    if ties == "optimistic":
        return (above < k).double()
    if ties == "pessimistic":
        return (above + tied < k).double()
    if ties != "expected":
        raise ValueError(f"ties: unknown {ties!r} (allowed: expected, optimistic, pessimistic)")
    m = ((similarity == best) & target).sum(1).double()
    x = k - above
    inside = (x > 0) & (x <= tied)
    xs = x.clamp(min=0).minimum(tied)  # keeps lgamma's arguments positive outside ``inside``
    lg = torch.lgamma
    log_ratio = lg(tied + 1) - lg(tied - xs + 1) - lg(tied + m + 1) + lg(tied + m - xs + 1)
    return torch.where(inside, 1 - log_ratio.exp(), (x > tied).double())


def recall_at_k(
    similarity: torch.Tensor,
    caption_image: torch.Tensor | Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ties: Ties = "expected",
) -> dict[str, float]:
    """Recall@K in both directions: ``{"recall@1_t2i": ..., "recall@1_i2t": ..., ...}``.

    ``similarity`` is (captions × images), higher = more similar; ``caption_image[r]``
    is the column of caption ``r``'s image (None: square, caption ``r`` ↔ image ``r``).
    Every image needs at least one caption. A K at or above the number of images gives
    text→image recall 1 (logged), not an error, so one K list serves small test sets.
    Degenerate inputs (fewer than 2 captions or images, NaN, bad indices) raise
    ValueError.
    """
    similarity = torch.as_tensor(similarity).double()
    if caption_image is None:
        if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
            raise ValueError(
                f"caption_image: needed for a non-square similarity {tuple(similarity.shape)}"
            )
        caption_image = torch.arange(similarity.shape[0])
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    _check(similarity, caption_image, ks)
    t2i = torch.nn.functional.one_hot(caption_image, similarity.shape[1]).bool()  # (N, I)
    queries = {"t2i": (similarity, t2i), "i2t": (similarity.T, t2i.T)}
    if max(ks) >= similarity.shape[1]:
        log.info(
            "recall@%d: K reaches the %d candidate images, text→image recall is 1",
            max(ks),
            similarity.shape[1],
        )
    return {
        f"recall@{k}_{d}": float(_hit_rate(s, t, k, ties).mean())
        for k in ks
        for d, (s, t) in queries.items()
    }


# ---------------------------------------------------------------------- tidy rows


def retrieval_recall(
    text: torch.Tensor,
    image: torch.Tensor,
    image_ids: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    average_captions: bool = False,
    ties: Ties = "expected",
) -> dict[str, float]:
    """Recall from paired rows (row r: a caption with its image ``image_ids[r]``), by cosine.

    Rows of one image (same image id) are merged: the image side is the mean of
    its rows (identical rows for a text-independent image stream); the text side keeps
    one query per caption, or with ``average_captions`` the mean of each image's
    captions (one text per image, a square problem).
    """
    groups = caption_groups(image_ids)
    images = average_over_images(image, groups)
    if average_captions:
        return recall_at_k(
            cosine_similarity(average_over_images(text, groups), images), None, ks, ties
        )
    return recall_at_k(cosine_similarity(text, images), groups.caption_image, ks, ties)


def retrieval_table(
    reps: Representations,
    info: RunInfo | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    average_captions: bool = False,
    ties: Ties = "expected",
) -> pd.DataFrame:
    """Retrieval rows for the tidy alignment table (same columns as ``alignment_table``).

    One row per (fusion layer, pooled view, K, direction), measure ``recall@K_t2i`` /
    ``recall@K_i2t`` (with ``average_captions``: ``recall@K_t2i_avg`` /
    ``recall@K_i2t_avg``); no intervals or p-values (NaN). Layers whose streams have
    different widths are skipped (cosine needs one space). See the module docstring for
    the co-attention caveat.
    """
    info = info or RunInfo()
    suffix = "_avg" if average_captions else ""
    rows: list[dict[str, Any]] = []
    for layer in reps.fusion_layers:
        for view in (v for v in reps.views if v != "tokens"):
            text, image = reps.get(layer.name, "text", view), reps.get(layer.name, "image", view)
            if text.shape[1] != image.shape[1]:
                log.info(
                    "retrieval: skipping %s (stream widths %d, %d)",
                    layer.name,
                    text.shape[1],
                    image.shape[1],
                )
                continue
            values = retrieval_recall(text, image, reps.image_ids, ks, average_captions, ties)
            rows += [
                _row(info, layer.name, layer.kind, view, name + suffix, value)
                for name, value in values.items()
            ]
    return pd.DataFrame(rows, columns=list(COLUMNS))

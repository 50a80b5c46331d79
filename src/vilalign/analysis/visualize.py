"""Pictures of attributions: heat maps over the image (PNG) and coloured tokens (HTML).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vilalign.io import safe_name as file_name

if TYPE_CHECKING:
    from vilalign.analysis.attribution import Explanation


def safe_name(text: str) -> str:
    """A file-name-safe form of a sample id."""
    return file_name(text, fallback="sample")


def denormalise(
    pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """(B, C, H, W) normalised images → (B, H, W, 3) floats in [0, 1] for display."""
    x = pixel_values.detach().float().cpu()
    m = torch.tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype)[None, :, None, None]
    x = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1)  # (B, H, W, C)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.numpy()


def save_heatmap_overlay(
    image: np.ndarray,
    heat: np.ndarray,
    path: str | Path,
    title: str | None = None,
    cmap: str = "viridis",
    max_alpha: float = 0.8,
    label: str = "relevance (share of the map's maximum)",
) -> Path:
    """Save the image beside the image overlaid with ``heat`` (rows, cols; one value a patch),
    with a colour bar saying what the colours mean.

    Each patch cell is coloured by its positive score scaled to the map's maximum, with
    opacity growing with the score, so irrelevant patches leave the image visible. No
    interpolation: one cell is exactly one patch.
    """
    heat = np.clip(np.asarray(heat, float), 0, None)
    top = heat.max()
    heat = heat / top if top > 0 else heat
    rgba = colormaps[cmap](heat)  # (rows, cols, 4)
    rgba[..., 3] = max_alpha * heat
    H, W = image.shape[:2]
    fig = Figure(figsize=(6.6, 3.4 if title else 3), dpi=100)
    FigureCanvasAgg(fig)
    top_edge = 0.86 if title else 1.0
    for i, overlay in enumerate((False, True)):
        ax = fig.add_axes((i * 0.44 + 0.01, 0.01, 0.42, top_edge - 0.02))
        ax.imshow(image, extent=(0, W, H, 0))
        if overlay:
            ax.imshow(rgba, extent=(0, W, H, 0), interpolation="nearest")
        ax.set_axis_off()
    bar_ax = fig.add_axes((0.9, 0.08, 0.025, top_edge - 0.16))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=bar_ax)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def tokens_html(
    tokens: Sequence[str], scores: np.ndarray, special: np.ndarray | None = None
) -> str:
    """An HTML snippet: each token on a red background as strong as its positive score.

    Scores are scaled by the largest positive score among non-special tokens; special
    tokens ([CLS], [SEP]) are shown grey, since their self-relevance would swamp the rest.
    The exact score is in each token's tooltip.
    """
    scores = np.asarray(scores, float)
    special = np.zeros(len(tokens), bool) if special is None else np.asarray(special, bool)
    words = np.clip(scores[~special], 0, None)
    top = words.max() if words.size and words.max() > 0 else 1.0
    spans = []
    for token, score, is_special in zip(tokens, scores, special, strict=True):
        if is_special:
            style = "color:#888"
        else:
            style = f"background:rgba(220,30,30,{max(score, 0) / top:.3f})"
        spans.append(
            f'<span style="{style};padding:1px 3px;margin:1px;border-radius:3px" '
            f'title="{score:.4g}">{html.escape(token)}</span>'
        )
    return '<div class="tokens" style="font-family:monospace">' + " ".join(spans) + "</div>"


def explanation_html(explanation: Explanation, image_file: str | None = None) -> str:
    """One explanation as an HTML snippet: heading, the overlay image, the coloured tokens."""
    e = explanation
    parts = [f'<div class="explanation"><h3>{html.escape(e.title())}</h3>']
    if image_file is not None:
        parts.append(f'<img src="{html.escape(image_file)}" alt="heat map" style="width:100%">')
    if e.token_scores.any():
        parts.append(tokens_html(e.tokens, e.token_scores, e.special))
    parts.append("</div>")
    return "\n".join(parts)

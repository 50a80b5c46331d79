"""Baselines behind the same model interface, as config transformations (variants as data)."""

from __future__ import annotations

from typing import Any

from vilalign.config import ConfigError, ModelConfig, deep_merge, validate

# The baselines that change the variant also clear ``fusion_layers``: they are defined by
# their variant, whatever layer list the configured model names.
BASELINES: dict[str, dict[str, Any]] = {
    # The full two-stream model as configured.
    "vilbert": {},
    # Every fusion layer is per-stream self-attention; the streams meet only in the
    # fused vector at the end (late fusion).
    "no_coattention": {
        "variant": "no_coattention",
        "coattention_layers": [],
        "fusion_layers": None,
    },
    # No fusion layers: pooled BERT and ViT outputs concatenated into the MLP head.
    "concat_features": {
        "variant": "concat_features",
        "depth": 0,
        "coattention_layers": [],
        "fusion_layers": None,
        "fusion": "concat",
    },
    # Same architecture, text encoder randomly initialised instead of pretrained.
    "random_text": {"text": {"init": "random"}},
    # ViLT-style: one sequence of tokens + patches (with modality-type embeddings) through
    # shared transformer layers; its text part and image part are the two "streams".
    "single_stream": {"variant": "single_stream", "coattention_layers": [], "fusion_layers": None},
    # Floors for every downstream table: what the text alone / the image alone achieve.
    "text_only": {
        "variant": "text_only",
        "depth": 0,
        "coattention_layers": [],
        "fusion_layers": None,
    },
    "image_only": {
        "variant": "image_only",
        "depth": 0,
        "coattention_layers": [],
        "fusion_layers": None,
    },
}


def apply_baseline(config: ModelConfig, name: str) -> ModelConfig:
    """The config of baseline ``name`` built from ``config``."""
    if name not in BASELINES:
        raise ConfigError(f"baseline: unknown baseline {name!r} (allowed: {', '.join(BASELINES)})")
    data = deep_merge(config.model_dump(), BASELINES[name])
    return validate(ModelConfig, data, source=f"baseline {name!r}")

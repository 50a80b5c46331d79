"""The two-stream model, its encoders, heads, baselines and checkpoints."""

from vilalign.model.baselines import BASELINES, apply_baseline
from vilalign.model.checkpoint import load_pretrained, save_pretrained, unwrap
from vilalign.model.encoders import load_tokenizer
from vilalign.model.vilbert import VilbertModel, VilbertOutput, build_model

__all__ = [
    "BASELINES",
    "VilbertModel",
    "VilbertOutput",
    "apply_baseline",
    "build_model",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
    "unwrap",
]

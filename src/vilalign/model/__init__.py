"""The two-stream model, its encoders, fusion layers, heads, baselines and checkpoints."""

# The fusion layer types register themselves when their module is imported: a new type's
# module is imported here (see vilalign.model.fusion).
from vilalign.model import coattention  # noqa: F401
from vilalign.model.baselines import BASELINES, apply_baseline
from vilalign.model.checkpoint import load_pretrained, save_pretrained, unwrap
from vilalign.model.encoders import load_tokenizer
from vilalign.model.fusion import (
    FUSION_LAYERS,
    FusionLayer,
    fusion_layer_type,
    register_fusion_layer,
)
from vilalign.model.vilbert import VilbertModel, VilbertOutput, build_model

__all__ = [
    "BASELINES",
    "FUSION_LAYERS",
    "FusionLayer",
    "VilbertModel",
    "VilbertOutput",
    "apply_baseline",
    "build_model",
    "fusion_layer_type",
    "load_pretrained",
    "load_tokenizer",
    "register_fusion_layer",
    "save_pretrained",
    "unwrap",
]

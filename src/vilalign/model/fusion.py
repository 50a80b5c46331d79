"""The fusion-layer contract, and the table of fusion layer types the model is built from.

A fusion layer takes the two streams and returns them, so the model stacks layers of any
type in any order (timm passes a block class; we look one up by its kind name):

    layer(text (B, T, Dt), image (B, I, Di), text_mask (B, T), need_weights)
        -> (text, image, attentions or None)

Every type says what it is, and the analyses (attention entropy, relevancy, bertviz,
collection) read that instead of knowing the types:

- ``kind``: its name, e.g. ``"coattention"``: what ``ModelConfig.layer_kinds``,
  ``fusion_layers``, ``VilbertOutput.layer_kinds`` and every table's ``layer_kind`` column
  say. Each name is spelt once: the built-in kinds in :mod:`vilalign.config` (the variants
  are made of them, and the config imports nothing above it), a new type's in its module.
- ``directions``: ``{direction: (query stream, key stream)}``, the keys of the attention
  dict it returns (each weight map ``(B, H, Q, K)``). A stream is ``text``, ``image`` or
  ``joint``: the text tokens (padded to the batch's text length) followed by the image
  tokens, for layers that attend over one concatenated sequence; :func:`split_joint` cuts
  such a map into its text and image parts. A direction name means the same pair in every
  registered type (registration checks), so an attention dict alone says what it holds.
- ``from_config(config, text_dim, image_dim)``: builds the layer from the model config and
  the widths of the two streams it receives.

Adding a type: a module with a :class:`FusionLayer` subclass decorated with
:func:`register_fusion_layer`, imported by ``vilalign/model/__init__.py``; a config then
names it in ``fusion_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: the config module imports nothing of the model
    from vilalign.config import ModelConfig

TEXT = "text"
IMAGE = "image"
#: The concatenated sequence of a single-stream layer: the text tokens, then the image tokens.
JOINT = "joint"
STREAMS = (TEXT, IMAGE, JOINT)

Attentions = dict[str, torch.Tensor]
#: What a fusion layer returns: the text states, the image states, the weights (or None).
FusionOutput = tuple[torch.Tensor, torch.Tensor, Attentions | None]


class FusionLayer(nn.Module):
    """Base of every fusion layer type: declares ``kind`` and ``directions``; see the module."""

    kind: ClassVar[str]
    directions: ClassVar[Mapping[str, tuple[str, str]]]
    #: How the layer is named to people ("co-attention"); default: the kind with dashes.
    title: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int, image_dim: int) -> FusionLayer:
        raise NotImplementedError(f"{cls.__name__}.from_config")

    # forward(text, image, text_mask, need_weights=False) -> FusionOutput: see the module.


def declare_directions(**pairs: tuple[str, str]) -> Mapping[str, tuple[str, str]]:
    """A read-only ``directions`` map (shared by every layer of a type, so not mutable)."""
    return MappingProxyType(pairs)


#: kind -> layer class. Filled by :func:`register_fusion_layer`.
FUSION_LAYERS: dict[str, type[FusionLayer]] = {}

L = TypeVar("L", bound=type[FusionLayer])


def register_fusion_layer(cls: L) -> L:
    """Add a fusion layer type to :data:`FUSION_LAYERS` (use as a class decorator)."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{cls.__name__}: a fusion layer type needs a 'kind' name")
    if kind in FUSION_LAYERS and FUSION_LAYERS[kind] is not cls:
        raise ValueError(f"fusion layer kind {kind!r} is taken by {FUSION_LAYERS[kind].__name__}")
    _check_directions(cls)
    FUSION_LAYERS[kind] = cls
    return cls


def _check_directions(cls: type[FusionLayer]) -> None:
    if not getattr(cls, "directions", None):
        raise ValueError(f"{cls.__name__}: a fusion layer type needs 'directions'")
    for name, pair in cls.directions.items():
        if any(s not in STREAMS for s in pair) or (JOINT in pair and pair != (JOINT, JOINT)):
            raise ValueError(
                f"{cls.__name__}.directions[{name!r}]: {pair} is not a (query, key) pair of "
                f"{', '.join(STREAMS)} (a joint stream attends to itself only)"
            )
        known = _all_directions(exclude=cls).get(name)
        if known is not None and known != pair:
            raise ValueError(
                f"{cls.__name__}.directions[{name!r}]: {pair}, but another fusion layer type "
                f"uses that name for {known}; a direction name means one pair"
            )


def _all_directions(exclude: type[FusionLayer] | None = None) -> dict[str, tuple[str, str]]:
    return {
        name: pair
        for cls in FUSION_LAYERS.values()
        if cls is not exclude
        for name, pair in cls.directions.items()
    }


def unregister_fusion_layer(kind: str) -> None:
    """Remove a type (tests that register a toy one clean up with this)."""
    FUSION_LAYERS.pop(kind, None)


def fusion_layer_type(kind: str) -> type[FusionLayer]:
    """The registered class of ``kind``; an unknown kind is an error naming the known ones."""
    if kind not in FUSION_LAYERS:
        raise ValueError(
            f"fusion layer kind {kind!r} is not registered (known: {', '.join(FUSION_LAYERS)})"
        )
    return FUSION_LAYERS[kind]


def layer_title(kind: str) -> str:
    """How a layer kind is named to people: 'co-attention', 'self-attention', ..."""
    return fusion_layer_type(kind).title or kind.replace("_", "-")


def direction_streams(direction: str) -> tuple[str, str]:
    """(query stream, key stream) of a direction name, as the layer types declare it."""
    pairs = _all_directions()
    if direction not in pairs:
        raise ValueError(
            f"attention direction {direction!r} is not declared by any fusion layer type "
            f"(known: {', '.join(pairs)})"
        )
    return pairs[direction]


def split_joint(x: torch.Tensor, n_text: int, dim: int) -> dict[str, torch.Tensor]:
    """A joint axis cut into its text part (the first ``n_text`` positions along ``dim``)
    and its image part (the rest)."""
    length = x.shape[dim]
    return {TEXT: x.narrow(dim, 0, n_text), IMAGE: x.narrow(dim, n_text, length - n_text)}

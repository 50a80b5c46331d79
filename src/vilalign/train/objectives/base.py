"""The objective contract, and the registry that ``ObjectivesConfig`` and the experiments read.

An objective is an ``nn.Module`` (its head, if it has one, is a submodule) that declares:

- ``name``: the YAML key under ``objectives:`` and the prefix of its logged figures
  (``<name>_loss``, ``<name>_accuracy``, ...);
- ``config_class``: its settings, an :class:`ObjectiveConfig` (``weight`` plus its own);
- ``batch_fields``: the :class:`~vilalign.data.types.Batch` fields it reads; a batch
  without one of them skips the term (e.g. a validation batch without MLM labels);
- ``masked_image_field``: a ``Batch`` field of patches to mask in a second view of the
  batch (MIM); the task then runs the batch twice over in one forward (see
  :class:`~vilalign.train.tasks.PretrainingTask`);
- ``monitor``: the logged figure that rises as it learns, if the run should keep its best
  checkpoint by it (alignment prediction's accuracy);

and builds itself with ``from_config(model, cfg)`` and computes ``term(views, batch)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, Field, create_model
from torch import nn

from vilalign.config import StrictModel
from vilalign.data.types import Batch


class ObjectiveConfig(StrictModel):
    """What every objective's settings have: its weight in the summed loss (0: off)."""

    weight: float = Field(1.0, ge=0)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, unweighted
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


@dataclass
class ModelRows:
    """The rows of one view in a (possibly doubled) forward's output."""

    text_sequence: torch.Tensor
    image_sequence: torch.Tensor
    fused: torch.Tensor
    pooled_text: torch.Tensor
    pooled_image: torch.Tensor

    @classmethod
    def of(cls, out: Any, rows: slice) -> ModelRows:
        return cls(**{f.name: getattr(out, f.name)[rows] for f in fields(cls)})


@dataclass
class PretrainingViews:
    """What one forward gives the objectives: the unmasked view's outputs and, when an
    objective asked for a masked view, that view's image states (B, prefix + P, D)."""

    clean: ModelRows
    masked_image: torch.Tensor | None
    num_prefix_tokens: int


class Objective(nn.Module):
    """Base of every pretraining objective; see the module for what a subclass declares."""

    name: ClassVar[str]
    config_class: ClassVar[type[ObjectiveConfig]]
    batch_fields: ClassVar[tuple[str, ...]] = ()
    masked_image_field: ClassVar[str | None] = None
    monitor: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Any) -> Objective:
        """The objective for ``model`` (a VilbertModel) with settings ``cfg``."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    def term(self, views: PretrainingViews, batch: Batch) -> ObjectiveOutput:
        """The unweighted loss (and figures to log) of one batch."""
        raise NotImplementedError(f"{type(self).__name__}.term")


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A zero that stays in the graph, so backward works when a batch has nothing to predict."""
    return like.sum() * 0.0


# ---------------------------------------------------------------------------- registry

#: name -> objective class, in registration order: the order of ``ObjectivesConfig``'s
#: fields, of the logged terms and of the heads' creation (hence of parameter init).
OBJECTIVES: dict[str, type[Objective]] = {}

O = TypeVar("O", bound=type[Objective])


def register_objective(cls: O) -> O:
    """Add an objective class to :data:`OBJECTIVES` (also usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__name__}: an objective needs a 'name' that is an identifier")
    if name in OBJECTIVES and OBJECTIVES[name] is not cls:
        raise ValueError(f"objective {name!r} is taken by {OBJECTIVES[name].__name__}")
    if not issubclass(getattr(cls, "config_class", object), ObjectiveConfig):
        raise ValueError(f"{cls.__name__}: config_class must subclass ObjectiveConfig")
    OBJECTIVES[name] = cls
    return cls


def unregister_objective(name: str) -> None:
    """Remove an objective (tests that register a toy one clean up with this)."""
    OBJECTIVES.pop(name, None)


def objective_type(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not registered (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def default_weights() -> dict[str, float]:
    """Every registered objective's weight when a run file does not set it (0: opt-in)."""
    return {name: cls.config_class().weight for name, cls in OBJECTIVES.items()}


class ObjectivesBase(StrictModel):
    """Pretraining objectives; a weight of 0 switches a term off (any subset is allowed)."""

    @property
    def active(self) -> list[str]:
        """The objectives with a weight above 0, in registry order."""
        return [name for name in type(self).model_fields if getattr(self, name).weight > 0]


def objectives_config_class(registry: Mapping[str, type[Objective]] | None = None) -> type:
    """The pydantic model whose fields are the registered objectives' configs.

    ``vilalign.train.config.ObjectivesConfig`` is this, built once at import; an objective
    registered later (a plugin, a test) needs a class built after its registration.
    """
    registry = OBJECTIVES if registry is None else registry
    specs: dict[str, Any] = {
        name: (cls.config_class, Field(default_factory=cls.config_class))
        for name, cls in registry.items()
    }
    model: type[BaseModel] = create_model(
        "RegisteredObjectives", __base__=ObjectivesBase, __module__=__name__, **specs
    )
    return model

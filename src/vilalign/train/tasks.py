"""Tasks: what one training step computes, and which metrics a split reports.

A task is an ``nn.Module`` that holds the model and its task-specific heads, so the loop
optimises, checkpoints and compiles one module and knows nothing of the model:
``task(batch) -> StepResult`` and ``task.metrics(outputs) -> {name: value}``.
Fine-tuning tasks are data, not one class per dataset: each dataset declares its task
(``DatasetInfo.task``: a loss kind and the metric to monitor) and :data:`TASKS` reads
the declarations, giving each loss kind its loss and metrics (:data:`SCORING`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vilalign.data.registry import info_view
from vilalign.data.types import Batch, DatasetInfo, LossKind
from vilalign.train import metrics as M
from vilalign.train.objectives import (
    ModelRows,
    Objective,
    ObjectiveOutput,
    PretrainingViews,
    objective_type,
)
from vilalign.train.objectives.base import ObjectivesBase


@dataclass
class StepResult:
    """One micro-batch: the loss to back-propagate, scalars to average, per-sample outputs."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(nn.Module):
    """Base: the model plus heads; subclasses define ``forward`` and ``metrics``."""

    name: str = "task"
    monitor: str = "loss"
    monitor_mode: Literal["min", "max"] = "min"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Split-level metrics from the concatenated per-sample ``outputs``."""
        return {}

    def _run(self, batch: Batch, **kwargs):
        return self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            token_type_ids=batch.token_type_ids,
            **kwargs,
        )


# ---------------------------------------------------------------------------- fine-tuning

MetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels.long().reshape(-1))


def _binary(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float().reshape(-1))


def _multilabel(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def _soft(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # As in the bottom-up VQA models: BCE summed over answers, averaged over questions.
    return F.binary_cross_entropy_with_logits(logits, labels.float()) * logits.shape[1]


@dataclass(frozen=True)
class Scoring:
    """What training does with one loss kind a dataset declares: its loss and metrics."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: MetricFn


# One row per vilalign.data.types.LossKind (a test keeps the two equal).
SCORING: dict[str, Scoring] = {
    "multiclass": Scoring(_cross_entropy, M.multiclass_metrics),
    "binary": Scoring(_binary, M.binary_metrics),
    "multilabel": Scoring(_multilabel, M.multilabel_metrics),
    "soft": Scoring(_soft, M.vqa_metrics),
}


def task_loss(kind: LossKind, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of a fine-tuning head, in float32 whatever the autocast dtype."""
    if kind not in SCORING:
        raise ValueError(f"unknown loss kind {kind!r} (allowed: {', '.join(SCORING)})")
    return SCORING[kind].loss(logits.float(), labels)


@dataclass(frozen=True)
class TaskSpec:
    """A fine-tuning task as data: loss, metric function, label count, metric to monitor."""

    loss: LossKind
    metric_fn: MetricFn
    num_labels: int | None  # None: from the data (VQA's answer vocabulary)
    monitor: str
    monitor_mode: Literal["min", "max"] = "max"


def _spec(info: DatasetInfo) -> TaskSpec | None:
    """The task a dataset declares (``info.task``), with training's loss and metrics."""
    if info.task is None:
        return None
    scoring = SCORING[info.task.loss]
    return TaskSpec(
        info.task.loss, scoring.metrics, info.num_labels, info.task.monitor, info.task.monitor_mode
    )


# {dataset name: TaskSpec} for every registered dataset that declares a task; derived from
# the registry on each look-up, so a dataset registered later is a task too.
TASKS: Mapping[str, TaskSpec] = info_view(_spec)


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r} (allowed: {', '.join(TASKS)})")
    return TASKS[name]


class FinetuneTask(Task):
    """A classification head on the fused vector, with the spec's loss/metrics.

    The head is the model's own, unless ``head`` is given (a multi-dataset run gives each
    dataset its head on one shared model, see :mod:`vilalign.train.multitask`).
    """

    def __init__(self, model: nn.Module, name: str, head: nn.Module | None = None) -> None:
        super().__init__(model)
        self.name = name
        self.spec = task_spec(name)
        self.monitor = self.spec.monitor
        self.monitor_mode = self.spec.monitor_mode
        self.head = head

    def forward(self, batch: Batch) -> StepResult:
        if batch.labels is None:
            raise ValueError(f"task {self.name!r}: batch has no labels")
        out = self._run(batch)
        logits = out.logits if self.head is None else self.head(out.fused)
        if logits is None:
            raise ValueError(f"task {self.name!r}: the model has no task head (num_labels=0)")
        loss = task_loss(self.spec.loss, logits, batch.labels)
        outputs = {"logits": logits.detach().float(), "targets": batch.labels.detach()}
        return StepResult(loss, {"loss": loss.detach()}, outputs)

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.spec.metric_fn(outputs["logits"], outputs["targets"])


# ---------------------------------------------------------------------------- pretraining


class PretrainingTask(Task):
    """The enabled pretraining objectives (``vilalign.train.objectives``), weighted and summed.

    With an objective that asks for a masked view (MIM), the batch runs once at twice its
    size: the first half with that objective's mask applied to the image, the second half
    unmasked. The unmasked half serves every objective; the masked half's image states go
    to the one that asked (MIM's targets are the unmasked half's patch states, detached).
    One forward over both views keeps every row useful for some loss (a separate no-grad
    target pass would cost a forward that trains nothing).
    """

    name = "pretrain"

    def __init__(self, model: nn.Module, cfg: ObjectivesBase) -> None:
        super().__init__(model)
        if not cfg.active:
            raise ValueError("objectives: every weight is 0; switch on at least one objective")
        self.cfg = cfg
        # Each objective is a submodule under its own name ("mlm", "ap", ...): the state-dict
        # keys of every checkpoint so far. Created in registry order, the order the heads'
        # parameters have always been initialised in.
        self.objective_names = list(cfg.active)
        for name in self.objective_names:
            self.add_module(name, objective_type(name).from_config(model, getattr(cfg, name)))
        masking = [o for o in self._objectives() if o.masked_image_field is not None]
        if len(masking) > 1:
            names = [o.name for o in masking]
            raise ValueError(f"objectives: {names} each ask for a masked view; at most one may")
        # The Batch field of patches to mask in the second view (a name, not the module:
        # a module attribute would register the objective twice in the state dict).
        self._mask_field = masking[0].masked_image_field if masking else None
        monitored = [o for o in self._objectives() if o.monitor is not None]
        self.monitor = f"{monitored[0].name}_{monitored[0].monitor}" if monitored else "loss"
        self.monitor_mode = "max" if monitored else "min"

    def _objectives(self) -> list[Objective]:
        return [getattr(self, name) for name in self.objective_names]

    def forward(self, batch: Batch) -> StepResult:
        terms = self._terms(batch)
        weights = {name: getattr(self.cfg, name).weight for name in terms}
        loss = sum(weights[n] * t.loss for n, t in terms.items())
        logs = {"loss": loss.detach()}
        for name, term in terms.items():
            logs[f"{name}_loss"] = term.loss.detach()
            logs.update({f"{name}_{k}": v for k, v in term.logs.items()})
        return StepResult(loss, logs)

    def _terms(self, batch: Batch) -> dict[str, ObjectiveOutput]:
        views = self._views(batch)
        return {
            objective.name: objective.term(views, batch)
            for objective in self._objectives()
            if all(getattr(batch, f) is not None for f in objective.batch_fields)
        }

    def _views(self, batch: Batch) -> PretrainingViews:
        """The unmasked view's outputs and, when asked for, the masked view's image states."""
        prefix = self.model.num_prefix_tokens
        mask = getattr(batch, self._mask_field) if self._mask_field else None
        if mask is None:
            return PretrainingViews(ModelRows.of(self._run(batch), slice(None)), None, prefix)
        n = len(batch)
        out = self._run(_doubled(batch), image_mask=_masked_first(mask))
        return PretrainingViews(ModelRows.of(out, slice(n, None)), out.image_sequence[:n], prefix)


def _doubled(batch: Batch) -> Batch:
    """The batch twice over (first half: to be masked; second half: the target view)."""
    two = {
        f.name: torch.cat([getattr(batch, f.name)] * 2)
        for f in fields(batch)
        if f.name in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    }
    return replace(batch, **two)


def _masked_first(mask: torch.Tensor) -> torch.Tensor:
    """The image mask of a doubled batch: ``mask`` (B, P) on the first half, none on the second."""
    mask = mask.bool()
    return torch.cat([mask, torch.zeros_like(mask)])  # (2B, P)

"""The two contracts every dataset and every consumer share: ``Sample`` and ``Batch``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class Sample:
    """What a dataset yields.

    ``image`` is a float tensor C×H×W already normalised for the image encoder; ``label``
    is task-specific (class index, multi-hot vector, soft VQA targets, or None for
    caption data); ``id`` is unique within the dataset and stable across runs.
    """

    image: torch.Tensor
    text: str
    label: torch.Tensor | None
    id: str


@dataclass
class Batch:
    """What the model and the objectives consume. ``to(device)`` moves every tensor."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    token_type_ids: torch.Tensor  # (B, T) long
    pixel_values: torch.Tensor  # (B, C, H, W) float
    labels: torch.Tensor | None = None
    ids: list[str] = field(default_factory=list)
    # Pretraining extras, filled by the pretraining collator.
    mlm_labels: torch.Tensor | None = None  # (B, T) long, -100 where not predicted
    mim_mask: torch.Tensor | None = None  # (B, P) bool, True = patch masked
    ap_labels: torch.Tensor | None = None  # (B,) long, 1 = caption belongs to image
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor (also inside ``extras``) on ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=non_blocking)
            return value

        moved = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        moved["extras"] = {k: move(v) for k, v in self.extras.items()}
        return replace(self, **moved)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

"""One pass of a fine-tuned model over a dataset: per-sample logits, in dataset order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vilalign.data import Collator
from vilalign.model import VilbertModel, unwrap

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """A model's outputs on one split: ``logits`` (N, C) float32 in dataset order (C = 1
    for a binary head), ``labels`` (N, ...) when every sample has one, ``label_names`` what
    each class is (a binary head's two classes, negative first)."""

    ids: list[str]
    logits: np.ndarray
    labels: np.ndarray | None
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def probabilities(self) -> np.ndarray:
        """Per-output sigmoid: the probability a binary, multi-label or VQA head gives."""
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


def require_head(model: VilbertModel) -> None:
    if unwrap(model).head is None:
        raise ValueError("the model has no task head (num_labels=0): predict with a fine-tuned one")


def label_names_for(model: VilbertModel, dataset_names: Sequence[str] | None) -> list[str]:
    """What each output of the model's head means: the names saved with the model, else the
    dataset's (a checkpoint saved before label names travelled with it, with a warning);
    names that disagree with the dataset's are an error naming the first difference."""
    config = unwrap(model).config
    expected = 2 if config.num_labels == 1 else config.num_labels
    saved, data = config.label_names, list(dataset_names) if dataset_names else None
    if saved is not None and data is not None and saved != data:
        i = _first_difference(saved, data)
        raise ValueError(
            f"the model's labels are not this dataset's: label {i} is "
            f"{_at(saved, i)} in the model, {_at(data, i)} in the dataset "
            f"({len(saved)} and {len(data)} labels)"
        )
    names = saved or data
    if names is None or len(names) != expected:
        raise ValueError(
            f"the model's {expected} outputs have no names: neither the checkpoint nor the "
            "dataset names them (fine-tune again to store them, or predict on the dataset it "
            "was trained on)"
        )
    if saved is None:
        log.warning("the checkpoint stores no label names; using the dataset's (%d)", len(names))
    return list(names)


def _first_difference(a: Sequence[str], b: Sequence[str]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _at(names: Sequence[str], i: int) -> str:
    return repr(names[i]) if i < len(names) else "missing"


@torch.no_grad()
def predict(
    model: VilbertModel,
    dataset: Dataset,
    tokenizer: object,
    label_names: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
) -> Predictions:
    """Run ``model`` (on its device, in eval mode) over ``dataset`` in order."""
    require_head(model)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the split has no samples to predict (every record skipped?)")
    collate = Collator(tokenizer, max_length=unwrap(model).config.text.max_length)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = next(model.parameters()).device
    was_training, ids, logits, labels = model.training, [], [], []
    model.eval()
    try:
        for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
            out = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                pixel_values=batch.pixel_values.to(device),
                token_type_ids=batch.token_type_ids.to(device),
            )
            ids += batch.ids
            logits.append(out.logits.float().cpu())
            labels.append(batch.labels)
    finally:
        model.train(was_training)
    have_labels = bool(labels) and all(x is not None for x in labels)
    return Predictions(
        ids=ids,
        logits=torch.cat(logits).numpy(),
        labels=torch.cat(labels).numpy() if have_labels else None,
        label_names=list(label_names),
    )

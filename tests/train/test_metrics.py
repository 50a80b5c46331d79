"""Each task's metrics against values computed by hand on small arrays."""

from __future__ import annotations

import pytest
import torch

from vilalign.data.types import LOSS_KINDS
from vilalign.train.tasks import SCORING, TASKS, FinetuneTask, task_loss


def test_multiclass_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    for name in ("easyvqa", "food101"):
        assert TASKS[name].metric_fn(logits, targets) == {"accuracy": 0.5}


def test_binary_accuracy_and_auroc():
    logits = torch.tensor([-2.0, 0.5, 1.0, -0.5, 3.0])
    targets = torch.tensor([0, 0, 1, 1, 1])
    got = TASKS["hateful_memes"].metric_fn(logits, targets)
    assert got["accuracy"] == pytest.approx(3 / 5)  # predictions 0 1 1 0 1
    # Positive/negative score pairs ranked correctly: (1,-2) (1,.5) (-.5,-2) (3,-2) (3,.5) = 5/6.
    assert got["auroc"] == pytest.approx(5 / 6)
    one_class = TASKS["hateful_memes"].metric_fn(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))
    assert one_class["auroc"] != one_class["auroc"]  # NaN, not a crash


def test_multilabel_f1_averages():
    logits = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    got = TASKS["mmimdb"].metric_fn(logits, targets)
    # Per label (tp, fp, fn): A (2,0,0) B (1,0,1) C (1,1,0) → F1 1, 2/3, 2/3; supports 2, 2, 1.
    assert got["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert got["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert got["f1_weighted"] == pytest.approx((2 * 1 + 2 * 2 / 3 + 1 * 2 / 3) / 5)
    # Per sample: {A,C} vs {A} → 2/3; {A,B} vs {A,B} → 1; {C} vs {B,C} → 2/3.
    assert got["f1_samples"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_vqa_soft_accuracy_and_loss():
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
    targets = torch.tensor([[0.0, 0.6, 1.0], [0.3, 0.0, 0.0]])
    assert TASKS["vqa"].metric_fn(logits, targets)["vqa_accuracy"] == pytest.approx(0.45)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert task_loss("soft", logits, targets).item() == pytest.approx(bce.item() / 2, rel=1e-6)


def test_unknown_task_names_the_choices(make_config):
    from vilalign.model import build_model

    with pytest.raises(ValueError, match="easyvqa"):
        FinetuneTask(build_model(make_config()), "imagenet")


def test_every_loss_kind_a_dataset_may_declare_has_a_loss_and_metrics():
    assert set(SCORING) == set(LOSS_KINDS)
    assert {name: spec.loss for name, spec in TASKS.items()} == {
        "easyvqa": "multiclass", "food101": "multiclass", "hateful_memes": "binary",
        "mmimdb": "multilabel", "vqa": "soft",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown loss kind 'hinge'"):
        task_loss("hinge", torch.zeros(2, 2), torch.zeros(2))  # type: ignore[arg-type]

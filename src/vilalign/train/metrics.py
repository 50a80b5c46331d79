"""Evaluation metrics, computed by scikit-learn on whole-split arrays.

Each function takes model outputs (logits) and targets for a full split and returns a
dict of plain floats, so the loop can log them without knowing the task.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def multiclass_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy of the arg-max class; ``logits`` (N, C), ``targets`` (N,) class indices."""
    preds = logits.argmax(dim=1)
    return {"accuracy": float(accuracy_score(_np(targets), _np(preds)))}


def binary_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy at logit 0 and AUROC; ``logits`` (N,) or (N, 1), ``targets`` (N,) in {0, 1}."""
    scores = _np(logits.reshape(-1))
    y = _np(targets.reshape(-1))
    out = {"accuracy": float(accuracy_score(y, scores > 0))}
    # AUROC is undefined with one class present (a tiny or unlucky split): report NaN, not crash.
    out["auroc"] = float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")
    return out


def multilabel_metrics(
    logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0
) -> dict[str, float]:
    """F1 micro / macro / weighted / samples of ``logits > threshold`` against multi-hot targets."""
    preds = _np(logits) > threshold
    y = _np(targets) > 0.5
    return {
        f"f1_{avg}": float(f1_score(y, preds, average=avg, zero_division=0))
        for avg in ("micro", "macro", "weighted", "samples")
    }


def vqa_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """VQA accuracy: the soft score of the predicted answer, averaged over questions.

    The soft targets already hold the official ``min(#annotators who gave it / 3, 1)`` per
    answer (no library computes this), so the accuracy is the target at the arg-max.
    """
    preds = logits.argmax(dim=1, keepdim=True)
    return {"vqa_accuracy": float(targets.float().gather(1, preds).mean())}

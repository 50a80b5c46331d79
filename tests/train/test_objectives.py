"""Objectives: hand-computed InfoNCE, stop-gradient, tied MLM head, the combined task."""

from __future__ import annotations

import math

import pytest
import torch

from vilalign.data.masking import IGNORE_INDEX
from vilalign.data.types import Batch
from vilalign.model import build_model
from vilalign.train.config import ObjectivesConfig
from vilalign.train.objectives import (
    AlignmentPrediction,
    ContrastiveMIM,
    ImageTextContrastive,
    MaskedLanguageModelling,
    info_nce,
)
from vilalign.train.tasks import PretrainingTask


def test_info_nce_equals_a_hand_computed_value():
    # Unit vectors: q0=(1,0), q1=(0,1); k0=(1,0), k1=(0.6,0.8); temperature 0.5.
    q = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # Cosines: row 0 = (1, 0.6), row 1 = (0, 0.8); logits = cos / 0.5.
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert info_nce(q, k, 0.5).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_mim_loss_is_info_nce_at_masked_patches_and_stops_the_target_gradient():
    torch.manual_seed(0)
    mim = ContrastiveMIM(dim=4, temperature=0.1)
    masked = torch.randn(2, 1 + 3, 4, requires_grad=True)  # (B, prefix + P, D)
    target = torch.randn(2, 1 + 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    out = mim(masked, target, mask, num_prefix_tokens=1)
    online = mim.projection(masked[:, 1:][mask])
    expected = info_nce(online, target[:, 1:][mask], 0.1)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    out.loss.backward()
    assert target.grad is None  # stop-gradient: the target view gets nothing
    assert masked.grad is not None and masked.grad[:, 1:][mask].abs().sum() > 0
    assert masked.grad[:, 1:][~mask].abs().sum() == 0  # unmasked patches are not scored


def test_mlm_head_is_tied_and_scores_only_chosen_tokens():
    emb = torch.nn.Embedding(50, 8)
    mlm = MaskedLanguageModelling(emb)
    assert mlm.head.decoder.weight is emb.weight
    states = torch.randn(2, 5, 8)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 2], labels[1, 4] = 7, 9
    out = mlm(states, labels)
    logits = mlm.head(states[[0, 1], [2, 4]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([7, 9]))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    none = mlm(states, torch.full((2, 5), IGNORE_INDEX))
    assert none.loss.item() == 0.0


def test_ap_and_contrastive_terms():
    torch.manual_seed(0)
    ap = AlignmentPrediction(6)
    fused, labels = torch.randn(4, 6), torch.tensor([1, 0, 1, 0])
    out = ap(fused, labels)
    logits = ap.head(fused)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert out.logs["accuracy"].item() == ((logits > 0).long() == labels).float().mean().item()
    itc = ImageTextContrastive(0.07)
    text, image = torch.randn(4, 6), torch.randn(4, 6)
    got = itc(text, image, labels).loss  # only the positive pairs 0 and 2
    pos = torch.tensor([0, 2])
    ref = 0.5 * (info_nce(text[pos], image[pos], 0.07) + info_nce(image[pos], text[pos], 0.07))
    assert got.item() == pytest.approx(ref.item(), abs=1e-6)


def _pretraining_batch(model, n: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, 12), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102
    mlm = torch.full_like(ids, IGNORE_INDEX)
    mlm[:, 3] = ids[:, 3]
    ids[:, 3] = 103
    mim = torch.zeros(n, model.num_patches, dtype=torch.bool)
    mim[:, ::3] = True
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        pixel_values=torch.randn(n, 3, 32, 32, generator=gen),
        mlm_labels=mlm,
        mim_mask=mim,
        ap_labels=torch.tensor([1, 0] * (n // 2)),
    )


@pytest.mark.parametrize(
    "weights",
    [
        {"mlm": 1.0, "mim": 1.0, "ap": 1.0, "itc": 0.5},
        {"mlm": 1.0, "mim": 0.0, "ap": 1.0, "itc": 0.0},
        {"mlm": 0.0, "mim": 0.0, "ap": 1.0, "itc": 0.0},
    ],
)
def test_pretraining_task_combines_any_subset_and_logs_every_term(weights, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(num_labels=0))
    cfg = ObjectivesConfig(**{k: {"weight": w} for k, w in weights.items()})
    task = PretrainingTask(model, cfg)
    result = task(_pretraining_batch(model))
    active = [k for k, w in weights.items() if w > 0]
    assert {f"{k}_loss" for k in active} <= set(result.logs)
    assert not {f"{k}_loss" for k in weights if k not in active} & set(result.logs)
    total = sum(weights[k] * result.logs[f"{k}_loss"] for k in active)
    assert result.loss.item() == pytest.approx(float(total), rel=1e-5)
    result.loss.backward()
    assert model.text_encoder.embeddings.word_embeddings.weight.grad is not None


def test_no_objective_is_an_error(make_config):
    model = build_model(make_config(num_labels=0))
    zero = {"weight": 0.0}
    with pytest.raises(ValueError, match="objectives"):
        PretrainingTask(model, ObjectivesConfig(mlm=zero, mim=zero, ap=zero, itc=zero))

"""Objectives: hand-computed InfoNCE, stop-gradient, tied MLM head, the combined task, the
registry (a new objective in two steps), checkpoint key names and the fused width."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vilalign.data.masking import IGNORE_INDEX
from vilalign.data.types import Batch
from vilalign.experiments.spec import objective_names, objectives_overrides
from vilalign.model import apply_baseline, build_model
from vilalign.train.config import ObjectivesConfig
from vilalign.train.multitask import MultiTaskModule
from vilalign.train.objectives import (
    OBJECTIVES,
    AlignmentPrediction,
    ContrastiveMIM,
    ImageTextContrastive,
    MaskedLanguageModelling,
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    default_weights,
    info_nce,
    objectives_config_class,
    register_objective,
    unregister_objective,
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


# --------------------------------------------------------------------------- the registry


def test_the_config_and_the_experiments_read_the_registry():
    assert list(ObjectivesConfig.model_fields) == list(OBJECTIVES) == ["mlm", "mim", "ap", "itc"]
    assert default_weights() == {"mlm": 1.0, "mim": 1.0, "ap": 1.0, "itc": 0.0}
    assert ObjectivesConfig().active == ["mlm", "mim", "ap"]


class AgreeConfig(ObjectiveConfig):
    margin: float = Field(0.5, gt=0)


class PooledAgreement(Objective):
    """A new objective: matching pairs' pooled vectors should agree (cosine above a margin)."""

    name = "agree"
    config_class = AgreeConfig
    batch_fields = ("ap_labels",)

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin
        self.log_scale = nn.Parameter(torch.zeros(()))  # a "head": one learned scale

    @classmethod
    def from_config(cls, model, cfg: AgreeConfig) -> PooledAgreement:
        return cls(cfg.margin)

    def term(self, views, batch) -> ObjectiveOutput:
        keep = batch.ap_labels.bool()
        rows = views.clean
        cos = F.cosine_similarity(rows.pooled_text[keep], rows.pooled_image[keep], dim=-1)
        loss = (self.margin - cos * self.log_scale.exp()).clamp(min=0).mean()
        return ObjectiveOutput(loss, {"cosine": cos.mean().detach()})


@pytest.fixture
def agree():
    register_objective(PooledAgreement)
    yield PooledAgreement.name
    unregister_objective(PooledAgreement.name)


def test_a_new_objective_trains_and_the_experiments_know_it(agree, make_config):
    config_class = objectives_config_class()  # built after the registration
    cfg = config_class(mim={"weight": 0.0}, ap={"weight": 0.0}, agree={"weight": 2.0})
    assert cfg.active == ["mlm", "agree"] and cfg.agree.margin == 0.5
    torch.manual_seed(0)
    model = build_model(make_config(num_labels=0))
    task = PretrainingTask(model, cfg)
    assert "agree.log_scale" in task.state_dict()
    result = task(_pretraining_batch(model))
    assert {"mlm_loss", "agree_loss", "agree_cosine"} <= set(result.logs)
    expected = result.logs["mlm_loss"] + 2.0 * result.logs["agree_loss"]
    assert result.loss.item() == pytest.approx(float(expected), rel=1e-5)
    result.loss.backward()
    assert (
        task.agree.log_scale.grad is not None
        and model.text_pooler.dense.weight.grad.abs().sum() > 0
    )
    no_pairs = task(replace(_pretraining_batch(model), ap_labels=None))
    assert "agree_loss" not in no_pairs.logs  # a batch without its field skips the term
    assert objective_names("all") == ["mlm", "mim", "ap", "agree"]
    assert objectives_overrides({}, "agree")["agree"] == {"weight": 1.0}


def test_pretraining_checkpoints_keep_their_key_names(make_config):
    # The keys every pretraining checkpoint so far was written with: a run resumes from them.
    model = build_model(make_config(num_labels=0))
    task = PretrainingTask(model, ObjectivesConfig(itc={"weight": 0.5}))
    heads = {k for k in task.state_dict() if not k.startswith("model.")}
    assert heads == {
        "mlm.head.transform.0.weight", "mlm.head.transform.0.bias", "mlm.head.transform.2.weight",
        "mlm.head.transform.2.bias", "mlm.head.decoder.weight", "mlm.head.decoder.bias",
        "mim.projection.net.0.weight", "mim.projection.net.0.bias", "mim.projection.net.2.weight",
        "mim.projection.net.2.bias", "ap.head.linear.weight", "ap.head.linear.bias",
    }  # fmt: skip


@pytest.mark.parametrize(("baseline", "times_pooled"), [("text_only", 1), ("concat_features", 2)])
def test_every_head_reads_the_models_fused_width(make_config, baseline, times_pooled):
    # text_only with fusion: concat fuses nothing: the AP head once was twice too wide.
    cfg = apply_baseline(make_config(num_labels=3, fusion="concat"), baseline)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.fused_size == times_pooled * cfg.pooled_size
    task = PretrainingTask(model, ObjectivesConfig(mim={"weight": 0.0}))
    assert task.ap.head.linear.in_features == model.fused_size
    assert torch.isfinite(task(_pretraining_batch(model)).loss)
    multi = MultiTaskModule(model, {"a": "easyvqa"}, {"a": 3})
    assert model.head.net[1].in_features == multi.heads["a"].net[1].in_features == model.fused_size

"""Parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vilalign.model import build_model
from vilalign.train.config import ObjectivesConfig, OptimConfig
from vilalign.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from vilalign.train.tasks import PretrainingTask


def _biases_and_norm_weights(module: nn.Module) -> set[str]:
    names = {n for n, p in module.named_parameters() if n.endswith("bias")}
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.LayerNorm):
            names |= {f"{prefix}.{n}" for n, _ in sub.named_parameters()}
    return names


def test_no_decay_groups_hold_exactly_the_biases_and_norm_weights(make_config):
    # The pretraining task: the model's own declaration plus heads that declare nothing.
    task = PretrainingTask(build_model(make_config(num_labels=0)), ObjectivesConfig())
    groups = param_groups(task, OptimConfig())
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert no_decay == _biases_and_norm_weights(task)
    assert "model.text_encoder.embeddings.word_embeddings.weight" in decay
    all_names = {n for n, p in task.named_parameters() if p.requires_grad}
    assert no_decay | decay == all_names and not no_decay & decay


def test_pretrained_encoders_get_the_lower_lr_and_frozen_parts_are_left_out(make_config, tmp_path):
    model = build_model(make_config(image={"freeze": True}))
    # Declare the text encoder pretrained without loading anything.
    model.encoder_parameter_names = lambda: {
        f"text_encoder.{n}" for n, _ in model.text_encoder.named_parameters()
    }
    groups = param_groups(model, OptimConfig(lr=1e-4, encoder_lr_scale=0.1))
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert not any(n.startswith("image_encoder.vit.") for n in by_name)  # frozen
    assert by_name["text_encoder.embeddings.word_embeddings.weight"]["lr"] == pytest.approx(1e-5)
    assert by_name["head.net.1.weight"]["lr"] == pytest.approx(1e-4)
    opt = build_optimizer(model, OptimConfig())
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8


def test_warmup_then_cosine_at_known_steps():
    cfg = OptimConfig(warmup_ratio=0.1, schedule="cosine")
    total = 100  # 10 warm-up steps
    assert lr_factor(0, total, cfg) == pytest.approx(1 / 11)
    assert lr_factor(9, total, cfg) == pytest.approx(10 / 11)
    assert lr_factor(10, total, cfg) == pytest.approx(1.0)
    assert lr_factor(55, total, cfg) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(100, total, cfg) == pytest.approx(0.0, abs=1e-12)
    quarter = 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lr_factor(10 + 90 // 4, total, cfg) == pytest.approx(quarter, abs=1e-2)
    floor = OptimConfig(warmup_ratio=0.0, min_lr_ratio=0.1)
    assert lr_factor(100, total, floor) == pytest.approx(0.1)
    assert lr_factor(50, total, OptimConfig(warmup_ratio=0.0, schedule="linear")) == 0.5


def test_scheduler_drives_every_group():
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=1.0, warmup_ratio=0.5, encoder_lr_scale=0.1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, total_steps=4, cfg=cfg)
    seen = []
    for _ in range(4):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5])
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)
    assert torch.is_tensor(next(model.parameters()))

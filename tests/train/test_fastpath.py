"""The fast-path switches: each changes speed, never what the model computes."""

from __future__ import annotations

import pytest
import torch

from vilalign.model import build_model
from vilalign.model.attention import MultiHeadAttention
from vilalign.train.config import FastPathConfig, TrainConfig
from vilalign.train.fastpath import (
    apply_fast_paths,
    compile_fusion_layers,
    set_fused_attention,
    to_device,
)


def _inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 2000, (batch, 12), generator=gen),
        "attention_mask": torch.ones(batch, 12, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=gen),
    }


def test_sdpa_switch_reaches_every_attention_and_keeps_the_outputs(make_config):
    model = build_model(make_config()).eval()
    with torch.no_grad():
        fused = model(**_inputs()).fused
        switched = set_fused_attention(model, False)
        explicit = model(**_inputs()).fused
    fusion = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    assert switched > fusion > 0  # fusion layers, the ViT blocks and BERT
    assert not any(m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))
    assert model.text_encoder.config._attn_implementation == "eager"
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-4)


def test_compiling_the_fusion_layers_keeps_parameter_names(make_config):
    model = build_model(make_config())
    names = list(model.state_dict())
    assert compile_fusion_layers(model) == len(model.fusion_layers)
    assert list(model.state_dict()) == names  # checkpoints load into either


def test_on_cpu_the_gpu_switches_change_nothing(make_config, collate, toy_dataset):
    model = build_model(make_config())
    apply_fast_paths(model, FastPathConfig(), torch.device("cpu"))
    assert model.image_encoder.vit.patch_embed.proj.weight.is_contiguous()  # not channels-last
    batch = to_device(
        collate([toy_dataset(2)[i] for i in range(2)]), torch.device("cpu"), FastPathConfig()
    )
    assert batch.pixel_values.is_contiguous()
    assert TrainConfig().fast.sdpa and TrainConfig().fast.fused_adamw  # on by default


def test_a_training_step_never_takes_the_explicit_attention_path(
    make_config, collate, toy_dataset, tmp_path, monkeypatch
):
    """Every attention of a default training step runs SDPA; none computes its weights."""
    from vilalign.model import attention
    from vilalign.train.config import OptimConfig
    from vilalign.train.loop import Trainer
    from vilalign.train.tasks import FinetuneTask

    calls = {"sdpa": 0}
    sdpa = attention.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    # the explicit path's softmax (fast.sdpa=False makes this test fail, as it should)
    monkeypatch.setattr(
        torch.Tensor, "softmax", lambda *a, **k: pytest.fail("explicit attention in training")
    )
    trainer = Trainer(
        FinetuneTask(build_model(make_config()), "easyvqa"),
        TrainConfig(batch_size=2, epochs=1, max_steps=1, progress=False, device="cpu"),
        OptimConfig(),
        tmp_path,
        toy_dataset(2),
        None,
        collate,
    )
    trainer.train_epoch()
    fusion = sum(isinstance(m, MultiHeadAttention) for m in trainer.task.modules())
    assert trainer.progress.step == 1 and calls["sdpa"] >= fusion > 0

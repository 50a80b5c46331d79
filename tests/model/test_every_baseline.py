"""Every baseline x every feature (as timm tests every registered model): each either works,
checked for what a user relies on, or refuses with one clear error naming the baseline.

Built on a cut-down tiny preset whose image stream (64 wide) is narrower than the text
stream (128), so every place that needs a stream's width is exercised (the single-stream
baseline projects patches to the text width).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from vilalign.analysis.attention import UnsupportedModelError, attention_entropy
from vilalign.analysis.attribution import explain
from vilalign.analysis.collect import collect
from vilalign.config import model_config
from vilalign.data.masking import IGNORE_INDEX
from vilalign.data.types import Batch
from vilalign.model import BASELINES, apply_baseline, build_model
from vilalign.model.fusion import IMAGE, JOINT, TEXT, direction_streams
from vilalign.train.config import ObjectivesConfig, OptimConfig
from vilalign.train.optim import build_optimizer
from vilalign.train.tasks import FinetuneTask, PretrainingTask

T = 12  # padded text length
N_REAL = [12, 7, 12, 9]  # real tokens per sample: samples 1 and 3 are padded
GRID = (4, 4)  # 32 px images, 8 px patches
N_IMAGE = 1 + 16  # image CLS + patches
NUM_LABELS = 3

BASE = model_config(
    "tiny",
    text={"num_layers": 1, "max_length": T},
    image={"img_size": 32, "depth": 1, "embed_dim": 64},
    depth=2,
    coattention_layers=[1],
    num_labels=NUM_LABELS,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """One model per baseline, built once (tests that train work on a copy)."""
    built = {}
    for name in BASELINES:
        torch.manual_seed(0)
        built[name] = build_model(apply_baseline(BASE, name)).eval()
    return built


def make_batch(seed: int = 0) -> Batch:
    """4 samples with padding, labels and every pretraining field."""
    gen = torch.Generator().manual_seed(seed)
    n = len(N_REAL)
    ids = torch.randint(1000, 2000, (n, T), generator=gen)
    mask = torch.zeros(n, T, dtype=torch.long)
    for b, real in enumerate(N_REAL):
        mask[b, :real] = 1
        ids[b, 0], ids[b, real - 1], ids[b, real:] = 101, 102, 0  # [CLS] ... [SEP] [PAD]
    mlm = torch.full_like(ids, IGNORE_INDEX)
    mlm[:, 2], ids[:, 2] = ids[:, 2], 103
    mim = torch.zeros(n, GRID[0] * GRID[1], dtype=torch.bool)
    mim[:, ::3] = True
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros_like(ids),
        pixel_values=torch.randn(n, 3, 32, 32, generator=gen),
        labels=torch.tensor([0, 1, 2, 1]),
        ids=[f"s{b}" for b in range(n)],
        mlm_labels=mlm,
        mim_mask=mim,
        ap_labels=torch.tensor([1, 1, 0, 1]),
    )


def has_fusion_layers(name: str) -> bool:
    return bool(apply_baseline(BASE, name).layer_kinds)


def test_the_support_matrix_is_what_the_docs_say(models):
    unfused = {n for n in BASELINES if not has_fusion_layers(n)}
    assert unfused == {"concat_features", "text_only", "image_only"}
    assert {n for n, m in models.items() if IMAGE not in m.modalities} == {"text_only"}
    assert {n for n, m in models.items() if TEXT not in m.modalities} == {"image_only"}


@pytest.mark.parametrize("name", BASELINES)
def test_forward_with_attentions(models, name):
    model = models[name]
    b = make_batch()
    with torch.no_grad():
        out = model(b.input_ids, b.attention_mask, b.pixel_values, output_attentions=True)
    assert out.logits.shape == (4, NUM_LABELS) and torch.isfinite(out.logits).all()
    assert out.fused.shape == (4, model.fused_size)
    assert out.layer_kinds == [layer.kind for layer in model.fusion_layers]
    assert len(out.attentions) == len(model.fusion_layers) == len(out.text_states)
    for layer, attn in zip(model.fusion_layers, out.attentions, strict=True):
        assert set(attn) == set(layer.directions)
        for direction, w in attn.items():
            q, k = direction_streams(direction)
            length = {TEXT: T, IMAGE: N_IMAGE, JOINT: T + N_IMAGE}
            assert w.shape[-2:] == (length[q], length[k])
            torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))  # distributions
            if k in (TEXT, JOINT):  # padded text keys get no weight
                assert w[1, ..., N_REAL[1] : T].abs().max() == 0


@pytest.mark.parametrize("name", BASELINES)
def test_collection(models, name):
    model = models[name]
    reps = collect(model, [make_batch()], num_samples=4, include_encoders=True, progress=False)
    fusion = reps.fusion_layers
    assert [info.kind for info in fusion] == model.config.layer_kinds
    assert reps.ids == ["s0", "s1", "s2", "s3"]
    for info in reps.layers:
        for stream in info.streams:
            values = reps.get(info.name, stream, "mean")
            assert values.shape[0] == 4 and torch.isfinite(values).all()
    if fusion:  # the fusion layers' image states have the width the objectives read
        image = reps.get(fusion[-1].name, IMAGE, "cls")
        assert image.shape == (4, model.stream_widths[IMAGE])


@pytest.mark.parametrize("name", BASELINES)
def test_attention_entropy(models, name):
    model = models[name]
    if not has_fusion_layers(name):
        with pytest.raises(UnsupportedModelError, match=f"{name} baseline has no fusion layers"):
            attention_entropy(model, [make_batch()])
        return
    df = attention_entropy(model, [make_batch()])
    assert set(df["layer_kind"]) == set(model.config.layer_kinds)
    assert df["normalized_entropy"].between(0, 1 + 1e-9).all()
    real = dict(zip(["s0", "s1", "s2", "s3"], N_REAL, strict=True))
    keys = {
        TEXT: df["id"].map(real),
        IMAGE: pd.Series(N_IMAGE, index=df.index),
        JOINT: df["id"].map(real) + N_IMAGE,
    }
    for stream, expected in keys.items():
        rows = df["key_stream"] == stream
        assert (df.loc[rows, "n_keys"] == expected[rows]).all(), stream


@pytest.mark.parametrize("name", BASELINES)
def test_relevancy(models, name):
    model = models[name]
    if not has_fusion_layers(name):
        with pytest.raises(
            UnsupportedModelError, match=f"relevancy needs fusion layers; the {name}"
        ):
            explain(model, make_batch(), method="relevancy")
        return
    for e, n in zip(explain(model, make_batch(), method="relevancy"), N_REAL, strict=True):
        assert e.token_scores.shape == (n,) and e.patch_scores.shape == GRID  # real tokens only
        assert e.maps["R_tt"].shape == (n, n) and e.maps["R_ii"].shape == (N_IMAGE, N_IMAGE)
        assert e.maps["R_ti"].shape == (n, N_IMAGE)
        assert np.isfinite(e.token_scores).all() and (e.patch_scores >= 0).all()
        assert e.token_scores.sum() > 0 and e.attributed == (TEXT, IMAGE)


@pytest.mark.parametrize("name", BASELINES)
def test_gradcam(models, name):
    model = models[name]
    if IMAGE not in model.modalities:
        with pytest.raises(UnsupportedModelError, match=f"the {name} baseline does not use it"):
            explain(model, make_batch(), method="gradcam")
        return
    for e, n in zip(explain(model, make_batch(), method="gradcam"), N_REAL, strict=True):
        # ReLU(Σ α h) over the patch grid. (Untrained, all of a sample's patches may score
        # below 0, e.g. through the single-stream modality embedding all patches share.)
        assert e.patch_scores.shape == GRID and (e.patch_scores >= 0).all()
        assert np.isfinite(e.patch_scores).all()
        assert e.attributed == (IMAGE,) and not e.token_scores.any() and len(e.tokens) == n


@pytest.mark.parametrize("name", BASELINES)
def test_integrated_gradients(models, name):
    model = models[name]
    explanations = explain(model, make_batch(), method="integrated_gradients", n_steps=4)
    for e, n in zip(explanations, N_REAL, strict=True):
        assert e.attributed == model.modalities
        assert e.token_scores.shape == (n,) and e.patch_scores.shape == GRID
        # The modality the prediction reads gets scores; one it ignores gets none.
        assert bool(np.abs(e.token_scores).sum() > 0) == (TEXT in model.modalities)
        assert bool(np.abs(e.patch_scores).sum() > 0) == (IMAGE in model.modalities)
        assert np.isfinite(e.maps["convergence_delta"]).all()


def _trained_parameters(task: torch.nn.Module, step) -> float:
    """Total change of the trainable parameters after one optimiser step of ``step``."""
    before = {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(task, OptimConfig(lr=1e-3, warmup_ratio=0.0), fused=False)
    result = step()
    assert torch.isfinite(result.loss)
    result.loss.backward()
    optimizer.step()
    params = dict(task.named_parameters())
    return sum(float((params[n].detach() - p).abs().sum()) for n, p in before.items())


@pytest.mark.parametrize("name", BASELINES)
def test_one_finetuning_step(models, name):
    task = FinetuneTask(copy.deepcopy(models[name]).train(), "easyvqa")
    assert _trained_parameters(task, lambda: task(make_batch())) > 0


@pytest.mark.parametrize("name", BASELINES)
def test_one_pretraining_step_with_every_objective(models, name):
    model = copy.deepcopy(models[name]).train()
    weights = {"mlm": 1.0, "mim": 1.0, "ap": 1.0, "itc": 0.5}
    task = PretrainingTask(
        model, ObjectivesConfig(**{k: {"weight": w} for k, w in weights.items()})
    )
    logs = {}

    def step():
        result = task(make_batch())
        logs.update(result.logs)
        return result

    assert _trained_parameters(task, step) > 0
    assert {f"{k}_loss" for k in weights} <= set(logs)
    assert all(torch.isfinite(v) for v in logs.values())
    assert task.ap.head.linear.in_features == model.fused_size

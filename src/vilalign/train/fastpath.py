"""GPU fast paths as switches: SDPA kernels, compiled fusion layers, channels-last, TF32.

Each switch lives in :class:`~vilalign.train.config.FastPathConfig`; the loop calls
:func:`apply_fast_paths` once and :func:`to_device` for every batch. None of them changes
what the model computes (up to float rounding), so a benchmark can flip them one by one.
bf16 autocast (``train.amp``) and fused AdamW are applied by the loop and the optimiser.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vilalign.data.types import Batch
from vilalign.model.attention import MultiHeadAttention
from vilalign.train.config import FastPathConfig

logger = logging.getLogger(__name__)


def set_fused_attention(module: nn.Module, enabled: bool) -> int:
    """Switch every attention in ``module`` between SDPA and the explicit softmax path.

    Covers our :class:`MultiHeadAttention` (fusion layers), timm's ``Attention``
    (``fused_attn``, the image stream) and transformers' BERT (``sdpa`` / ``eager``
    implementation, the text stream). Returns the number of modules switched. Analysis
    never needs this: it asks the model for weights per call (``need_weights``).
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, MultiHeadAttention):
            sub.fused = enabled
            count += 1
        elif hasattr(sub, "fused_attn"):  # timm attention blocks
            sub.fused_attn = enabled
            count += 1
        elif callable(getattr(sub, "set_attn_implementation", None)) and hasattr(sub, "config"):
            sub.set_attn_implementation("sdpa" if enabled else "eager")
            count += 1
    return count


def compile_fusion_layers(model: nn.Module) -> int:
    """``torch.compile`` each fusion layer in place (names unchanged: checkpoints unaffected).

    Only the fusion layers: they are this project's code and the bulk of the new compute;
    BERT and timm blocks already run fused SDPA kernels and compile less reliably.
    """
    layers = getattr(model, "fusion_layers", None)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile()
    return len(layers)


def configure_backends(cfg: FastPathConfig, device: torch.device) -> None:
    """Process-wide CUDA settings (TF32 for float32 matmuls and convs)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32


def apply_fast_paths(
    model: nn.Module, cfg: FastPathConfig, device: torch.device, compile_model: bool = False
) -> None:
    """Apply the module-level switches to ``model`` (already on ``device``).

    ``compile_model`` (``train.compile``) compiles the whole model and supersedes
    ``compile_fusion``.
    """
    configure_backends(cfg, device)
    set_fused_attention(model, cfg.sdpa)
    if device.type == "cuda" and cfg.channels_last:
        # Only 4-D weights change layout: the ViT's patch-embedding conv.
        model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()  # in place: parameter names stay un-prefixed
    elif cfg.compile_fusion:
        compiled = compile_fusion_layers(model)
        logger.info("compiled %d fusion layers", compiled)


def to_device(batch: Batch, device: torch.device, cfg: FastPathConfig) -> Batch:
    """Move a batch (non-blocking: overlaps with compute when the loader pinned it)."""
    batch = batch.to(device, non_blocking=True)
    if device.type == "cuda" and cfg.channels_last and batch.pixel_values.dim() == 4:
        batch.pixel_values = batch.pixel_values.contiguous(memory_format=torch.channels_last)
    return batch


def pin_memory(cfg: FastPathConfig, device: torch.device) -> bool:
    return device.type == "cuda" and cfg.pin_memory

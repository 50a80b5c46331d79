"""AdamW parameter groups and the warm-up + decay schedule.

The model declares which parameters skip weight decay and which belong to the pretrained
encoders (``no_weight_decay_names`` / ``encoder_parameter_names``); this module only reads
those declarations, so it works for any module that makes them, and falls back to "every
1-D parameter is a bias or a norm weight" for modules that do not.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vilalign.train.config import OptimConfig


def declared_names(module: nn.Module, method: str) -> tuple[set[str], list[str]]:
    """Full names that submodules declare via ``method()``, and those submodules' prefixes.

    A training wrapper holds the model as a submodule (``model.``); the declaration is made
    by the model with its own names, so the submodule's prefix is added here.
    """
    names: set[str] = set()
    prefixes: list[str] = []
    for prefix, sub in module.named_modules():
        fn = getattr(sub, method, None)
        if callable(fn):
            stem = f"{prefix}." if prefix else ""
            names |= {stem + n for n in fn()}
            prefixes.append(stem)
    return names, prefixes


def no_decay(name: str, param: nn.Parameter, declared: set[str], covered: list[str]) -> bool:
    """Declared by its module if that module declares; else 1-D (biases and norm weights)."""
    if any(name.startswith(p) for p in covered):
        return name in declared
    return param.ndim <= 1


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four AdamW groups: {decay, no decay} x {encoder at lr*encoder_lr_scale, the rest}.

    Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped.
    """
    skip, covered = declared_names(module, "no_weight_decay_names")
    encoder, _ = declared_names(module, "encoder_parameter_names")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    names: dict[tuple[bool, bool], list[str]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        key = (no_decay(name, param, skip, covered), name in encoder)
        groups.setdefault(key, []).append(param)
        names.setdefault(key, []).append(name)
    out = []
    for (is_no_decay, is_encoder), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "param_names": names[(is_no_decay, is_encoder)],
                "weight_decay": 0.0 if is_no_decay else cfg.weight_decay,
                "lr": cfg.lr * (cfg.encoder_lr_scale if is_encoder else 1.0),
                "group": f"{'encoder' if is_encoder else 'head'}/"
                f"{'no_decay' if is_no_decay else 'decay'}",
            }
        )
    return out


def build_optimizer(module: nn.Module, cfg: OptimConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`: fused kernel on CUDA, multi-tensor (foreach) on CPU.

    ``fused=False`` (``train.fast.fused_adamw``) keeps the multi-tensor kernel on CUDA too.
    """
    groups = param_groups(module, cfg)
    use_fused = fused and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=True if use_fused else None,
        foreach=None if use_fused else True,
    )


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base lr at optimiser ``step`` (0-based).

    Linear warm-up from 0 over ``warmup_ratio * total_steps`` steps, then cosine / linear
    decay to ``min_lr_ratio`` at ``total_steps``, or constant.
    """
    warmup = int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig
) -> LambdaLR:
    """A LambdaLR applying :func:`lr_factor` (its state is just the step count: resumable)."""
    return LambdaLR(optimizer, partial(lr_factor, total_steps=total_steps, cfg=cfg))

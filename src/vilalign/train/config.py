"""Training configuration: optimiser, schedule, objectives, loop, checkpoints.

Defaults follow vilbert-multi-task's ``train_concap.py`` (lr 1e-4, betas (0.9, 0.98),
eps 1e-8, weight decay 0.01, 10 % warm-up, pretrained encoders at 0.1x the learning rate).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vilalign.config import StrictModel


class OptimConfig(StrictModel):
    """AdamW with parameter groups, linear warm-up then cosine (or linear/constant) decay."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    encoder_lr_scale: float = Field(
        0.1, ge=0, description="Learning-rate factor for the pretrained encoders' parameters."
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of steps spent warming up.")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of the decay, x lr.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; None: off.")


class MlmConfig(StrictModel):
    weight: float = Field(1.0, ge=0)
    probability: float = Field(0.15, gt=0, lt=1, description="Share of non-special tokens.")
    on_negatives: bool = Field(
        False,
        description="Also predict masked words of AP negatives; off because a caption that "
        "does not describe the image teaches the text stream to ignore the image.",
    )


class MimConfig(StrictModel):
    weight: float = Field(1.0, ge=0)
    ratio: float = Field(0.4, gt=0, lt=1, description="Share of image patches masked.")
    pattern: Literal["random", "block"] = "random"
    temperature: float = Field(0.1, gt=0)


class ApConfig(StrictModel):
    weight: float = Field(1.0, ge=0)
    negative_ratio: float = Field(0.5, ge=0, le=1, description="Share of mismatched pairs.")


class ItcConfig(StrictModel):
    weight: float = Field(
        0.0,
        ge=0,
        description="Image-text contrastive term on the pooled vectors; off by default because "
        "the original work found it swamps the other terms.",
    )
    temperature: float = Field(0.07, gt=0)


class ObjectivesConfig(StrictModel):
    """Pretraining objectives; a weight of 0 switches a term off (any subset is allowed)."""

    mlm: MlmConfig = MlmConfig()
    mim: MimConfig = MimConfig()
    ap: ApConfig = ApConfig()
    itc: ItcConfig = ItcConfig()

    @property
    def active(self) -> list[str]:
        terms = {"mlm": self.mlm, "mim": self.mim, "ap": self.ap, "itc": self.itc}
        return [name for name, term in terms.items() if term.weight > 0]


class EarlyStoppingConfig(StrictModel):
    patience: int | None = Field(
        None, ge=1, description="Epochs without improvement before stopping; None: never stop."
    )
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(StrictModel):
    every_n_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimiser steps (one per epoch always)."
    )
    keep_best: bool = True


class TrainConfig(StrictModel):
    """The loop: batches, accumulation, epochs, precision, evaluation, checkpoints."""

    batch_size: int = Field(32, ge=1, description="Micro-batch size (what fits in memory).")
    target_batch_size: int | None = Field(
        None, ge=1, description="Samples per optimiser step; a multiple of batch_size."
    )
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="'auto': bf16 autocast on CUDA, none on CPU."
    )
    compile: bool = False
    device: str = Field("auto", description="'auto': cuda when available, else cpu.")
    num_workers: int = Field(0, ge=0)
    monitor: str = Field(
        "val/loss", description="Metric that picks the best checkpoint and drives early stopping."
    )
    monitor_mode: Literal["min", "max"] = "min"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    progress: bool = Field(True, description="Show a tqdm bar per epoch.")
    log_every_n_steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _check_accumulation(self) -> TrainConfig:
        target = self.target_batch_size
        if target is not None and target % self.batch_size:
            raise ValueError(
                f"target_batch_size: {target} is not a multiple of batch_size={self.batch_size}"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimiser step."""
        return (self.target_batch_size or self.batch_size) // self.batch_size

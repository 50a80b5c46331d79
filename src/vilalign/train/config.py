"""Training configuration: optimiser, schedule, objectives, loop, checkpoints.

Defaults follow vilbert-multi-task's ``train_concap.py`` (lr 1e-4, betas (0.9, 0.98),
eps 1e-8, weight decay 0.01, 10 % warm-up, pretrained encoders at 0.1x the learning rate).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from vilalign.analysis.spec import AlignmentOptions, SampleCount
from vilalign.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    StrictModel,
    deep_merge,
    preset_mapping,
    read_mapping,
    validate,
)
from vilalign.data.config import DataConfig
from vilalign.train.objectives import (  # noqa: F401 - the objectives' settings, re-exported
    ApConfig,
    ItcConfig,
    MimConfig,
    MlmConfig,
    objectives_config_class,
)


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


class ObjectivesConfig(objectives_config_class()):  # type: ignore[misc]
    """Pretraining objectives; a weight of 0 switches a term off (any subset is allowed).

    One field per registered objective (``vilalign.train.objectives``), each that
    objective's own settings: ``objectives: {mlm: {weight: 1.0}, mim: ..., ap: ..., itc: ...}``.
    """


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


class FastPathConfig(StrictModel):
    """GPU fast paths, each switchable (for benchmarks and debugging); none changes the maths.

    On by default where safe. On CPU they do nothing (except ``sdpa``, which is the
    default attention there as well).
    """

    sdpa: bool = Field(
        True,
        description="Fused scaled_dot_product_attention (flash / memory-efficient kernels) in "
        "every attention; False: the explicit softmax path (slow; analysis asks for it per call).",
    )
    compile_fusion: bool = Field(
        False,
        description="torch.compile each fusion (co-attention) layer; off by default: compiling "
        "takes minutes and helps only long runs. (train.compile compiles the whole model.)",
    )
    fused_adamw: bool = Field(True, description="AdamW's fused CUDA kernel (one launch per step).")
    channels_last: bool = Field(
        True, description="Images and the patch-embedding conv in channels-last layout on CUDA."
    )
    pin_memory: bool = Field(True, description="Page-locked loader batches on CUDA.")
    tf32: bool = Field(
        True, description="TF32 tensor cores for float32 matmuls/convs on CUDA (Ampere+)."
    )


class DistributedConfig(StrictModel):
    """DDP under torchrun; ignored in a single process."""

    find_unused_parameters: bool = Field(
        True,
        description="Let DDP skip parameters a step leaves unused. On by default: fine-tuning "
        "never uses the MIM mask token, and a batch with nothing to predict skips a head. "
        "False saves a graph walk per step when every step uses every trainable parameter "
        "(pretraining with all objectives on).",
    )
    timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long a rank waits for the others (rank 0 runs the epoch callbacks alone).",
    )


_RISING = ("accuracy", "vqa_accuracy", "auroc", "f1_", "recall", "mean")


def monitor_mode_of(name: str) -> Literal["min", "max"]:
    """Whether a metric named by ``train.monitor`` should fall (losses) or rise (scores).

    Names the tasks report are known; anything else must be told, since guessing the
    direction wrongly would keep the worst checkpoint as "best" without a word.
    """
    last = name.rsplit("/", 1)[-1]
    if "loss" in last:
        return "min"
    if last.startswith(_RISING):
        return "max"
    raise ValueError(f"monitor_mode: say whether {name!r} should rise ('max') or fall ('min')")


class TrainConfig(StrictModel):
    """The loop: batches, accumulation, epochs, precision, evaluation, checkpoints."""

    batch_size: int = Field(
        32, ge=1, description="Micro-batch size per process (what fits in one device's memory)."
    )
    target_batch_size: int | None = Field(
        None,
        ge=1,
        description="Samples per optimiser step over all ranks; a multiple of batch_size x "
        "ranks (the rest is gradient accumulation). Default: batch_size x ranks.",
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
    monitor: str | None = Field(
        None,
        description="Metric that picks the best checkpoint and drives early stopping, e.g. "
        "'val/accuracy'; default: the task's own (val/ when there is a validation split).",
    )
    monitor_mode: Literal["min", "max"] | None = Field(
        None,
        description="Whether the monitored metric should rise or fall; default: the task's, "
        "or from the name for 'monitor' (losses fall; accuracy, auroc, f1_*, recall*, mean rise).",
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    progress: bool = Field(True, description="Show a tqdm bar per epoch.")
    fast: FastPathConfig = FastPathConfig()
    distributed: DistributedConfig = DistributedConfig()
    log_every_n_steps: int = Field(10, ge=1)
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A NaN/inf loss or gradient: 'stop' the run (nothing of that step is "
        "applied or saved) or 'skip' the update and count it (train/skipped_steps).",
    )

    @model_serializer(mode="wrap")
    def _omit_default_nonfinite(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # At its default, ``on_nonfinite`` is left out of config.json: the configs (and the
        # hashes that name pretraining and cell folders) read as before it existed.
        data = handler(self)
        if self.on_nonfinite == "stop":
            data.pop("on_nonfinite", None)
        return data

    @model_validator(mode="after")
    def _check_monitor(self) -> TrainConfig:
        if self.monitor is not None and self.monitor_mode is None:
            monitor_mode_of(self.monitor)  # fails now, naming the field, if it cannot tell
        return self

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
        """Micro-batches per optimiser step in a single process (see ``Trainer`` for DDP)."""
        return (self.target_batch_size or self.batch_size) // self.batch_size


# ---------------------------------------------------------------------------- run configs


class SplitsConfig(StrictModel):
    """Which dataset splits train, validate (every epoch) and test (once, best weights)."""

    train: str | None = Field(None, description="Default: the dataset's training split.")
    val: str | None = Field(
        None, description="Default: hold out val_fraction of the training split."
    )
    test: str | None = Field(None, description="Default: the split named 'test', if any.")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of train held out when val is not named; 0: none."
    )


class PresetModelConfig(StrictModel):
    """A model as a preset plus overrides: the part every run file shares.

    ``model`` is merged onto the preset's model section, so a file only names what differs:
    ``{"preset": "tiny", "model": {"depth": 2}}``.
    """

    preset: str = Field("tiny", description=f"Model preset: one of {', '.join(PRESETS)}.")
    model: ModelConfig

    @model_validator(mode="before")
    @classmethod
    def _merge_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "tiny")
        model = data.get("model") or {}
        if isinstance(model, dict):
            data = {**data, "model": deep_merge(preset_mapping(preset)["model"], model)}
        return data


class RunConfig(PresetModelConfig):
    """What every single-dataset run needs: the model, data, loop and optimiser."""

    data: DataConfig = DataConfig()
    splits: SplitsConfig = SplitsConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()


class FinetuneConfig(RunConfig):
    """``vilalign finetune``: one task head on one dataset."""

    task: str | None = Field(
        None,
        description="Task name (hateful_memes, mmimdb, food101, vqa, easyvqa); "
        "default: the dataset's name.",
    )
    init_from: str | None = Field(
        None, description="A pretrained model folder (save_pretrained) or a pretraining run."
    )

    @property
    def task_name(self) -> str:
        return self.task or self.data.name


class PretrainConfig(RunConfig):
    """``vilalign pretrain``: the objectives on image-caption data."""

    data: DataConfig = DataConfig(name="easyvqa_captions")
    objectives: ObjectivesConfig = ObjectivesConfig()


class TaskDataConfig(StrictModel):
    """One dataset of a multi-dataset run: its task head, files, splits and batches."""

    task: str | None = Field(
        None,
        description="Task name (hateful_memes, mmimdb, food101, vqa, easyvqa): the head's "
        "loss and metrics; default: the dataset's name.",
    )
    data: DataConfig
    splits: SplitsConfig = SplitsConfig()
    batch_size: int | None = Field(
        None, ge=1, description="This dataset's batch size; default: train.batch_size."
    )
    loss_weight: float = Field(1.0, gt=0, description="Factor on this dataset's loss.")

    @property
    def task_name(self) -> str:
        return self.task or self.data.name

    @model_validator(mode="after")
    def _check_task(self) -> TaskDataConfig:
        from vilalign.train.tasks import TASKS  # (tasks imports this module)

        if self.task_name not in TASKS:
            raise ValueError(f"task: unknown task {self.task_name!r} (allowed: {', '.join(TASKS)})")
        return self


class SamplingConfig(StrictModel):
    """Which dataset each training batch comes from."""

    mode: Literal["round_robin", "proportional"] = Field(
        "round_robin",
        description="'round_robin': the datasets in turn, in file order; 'proportional': each "
        "batch's dataset drawn with probability proportional to its training-set size "
        "(seeded by train.seed and the epoch).",
    )
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Batches (= optimiser steps) per epoch; default: round_robin, one pass "
        "over the dataset with the most batches for each dataset; proportional, the sum "
        "of the datasets' batches.",
    )


class EpochAlignmentConfig(AlignmentOptions):
    """Alignment per fusion layer after every epoch, measured on each dataset separately.

    The fields are :class:`~vilalign.analysis.spec.AlignmentOptions`'; this section adds
    which of each dataset's splits to read, and its own defaults.
    """

    split: Literal["val", "test"] = Field(
        "val", description="Which of each dataset's splits to measure on."
    )
    n_samples: SampleCount = Field(
        200, description="Samples measured: the first N of the split, or 'all'."
    )
    measures: list[str] = Field(default_factory=lambda: ["cka_linear"], min_length=1)


class MultiTaskConfig(PresetModelConfig):
    """``vilalign finetune`` on several datasets at once: one model, one head per dataset.

    As in vilbert-multi-task: the backbone is shared, each dataset keeps its task's head,
    loss and metrics, and every optimiser step takes one batch of one dataset.
    """

    datasets: dict[str, TaskDataConfig] = Field(
        ..., min_length=1, description="Dataset name (used in metric keys) -> its settings."
    )
    sampling: SamplingConfig = SamplingConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    alignment: EpochAlignmentConfig | None = Field(
        None, description="Measure alignment on every dataset after every epoch; null: off."
    )
    init_from: str | None = Field(
        None, description="A pretrained model folder (save_pretrained) or a pretraining run."
    )

    @model_validator(mode="after")
    def _check_multitask(self) -> MultiTaskConfig:
        for name in self.datasets:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or name == "mean":
                raise ValueError(
                    f"datasets.{name}: a dataset name is a metric-key part: letters, digits, "
                    "'_' or '-', and not 'mean'"
                )
        if self.train.target_batch_size is not None:
            raise ValueError(
                "train.target_batch_size: not supported in a multi-dataset run (every "
                "optimiser step takes one batch of one dataset)"
            )
        for entry in self.datasets.values():
            if entry.batch_size is None:  # filled in, so the saved config.json says it
                entry.batch_size = self.train.batch_size
        return self


def is_multitask_mapping(data: dict[str, Any]) -> bool:
    """Whether a run file's mapping is the multi-dataset form (it has ``datasets:``)."""
    return "datasets" in data


def load_run_config(
    path: str | Path, kind: type[PresetModelConfig], **overrides: Any
) -> PresetModelConfig:
    """Read a YAML/JSON run file, apply (nested) overrides, validate; errors name the field."""
    data = deep_merge(read_mapping(path), overrides)
    if "preset" in data and data["preset"] not in PRESETS:
        raise ConfigError(f"{path}: preset: unknown preset {data['preset']!r}")
    return validate(kind, data, source=str(path))

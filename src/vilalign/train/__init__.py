"""vilalign.train: pretraining objectives, fine-tuning tasks, one loop, exact resume.

Typical use (what ``vilalign pretrain`` / ``vilalign finetune`` call)::

    cfg = load_run_config("configs/finetune_easyvqa_tiny.yaml", FinetuneConfig)
    result = run_finetuning(cfg, "runs/easyvqa", init_from=None, resume=False)
    result.test_metrics["test/accuracy"]

A run file with ``datasets:`` (several downstream datasets, a head each) loads as a
``MultiTaskConfig`` and runs with ``run_multitask`` (see :mod:`vilalign.train.multitask`).
"""

from vilalign.train.config import (
    FinetuneConfig,
    MultiTaskConfig,
    ObjectivesConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
)
from vilalign.train.loop import (
    EpochContext,
    FitResult,
    NonFiniteLossError,
    Trainer,
    seed_everything,
)
from vilalign.train.multitask import MultiTaskModule, MultiTaskTrainer
from vilalign.train.run import RunResult, run_finetuning, run_multitask, run_pretraining
from vilalign.train.tasks import TASKS, FinetuneTask, PretrainingTask, StepResult, Task
from vilalign.train.tracker import FileTracker, Tracker

__all__ = [
    "TASKS",
    "EpochContext",
    "FileTracker",
    "FinetuneConfig",
    "FinetuneTask",
    "FitResult",
    "MultiTaskConfig",
    "MultiTaskModule",
    "MultiTaskTrainer",
    "NonFiniteLossError",
    "ObjectivesConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainingTask",
    "RunConfig",
    "RunResult",
    "StepResult",
    "Task",
    "Tracker",
    "TrainConfig",
    "Trainer",
    "load_run_config",
    "run_finetuning",
    "run_multitask",
    "run_pretraining",
    "seed_everything",
]

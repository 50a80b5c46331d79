"""The library side of ``vilalign pretrain`` and ``vilalign finetune``: setup → fit → test.

Each function builds the datasets, the model and the task from a validated run config,
runs the one loop, evaluates the best checkpoint on the test split, and leaves in the
run folder: ``config.json`` (resolved), ``metrics.jsonl``/``.csv``, ``metrics.png``,
``checkpoints/``, ``model/`` (``save_pretrained`` of the best weights, the thing to
fine-tune from) and ``results.json``. ``run_multitask`` does the same for several
downstream datasets at once (:mod:`vilalign.train.multitask`).

Under ``torchrun`` every rank calls the same function with the same run folder (a shared
file system across nodes); rank 0 alone writes into it.

A run folder is held by one process at a time (:mod:`vilalign.locks`). Resuming with
changed settings applies those that can change mid-run (the optimiser's, the number of
epochs or steps, early stopping, checkpointing and runtime switches: see
:data:`MID_RUN_CHANGEABLE`) from the resumed step on, recording each change with its step
in ``config_changes.json`` and ``results.json``; any other difference is refused, listed.
The end of a run is resumable too: ``results.json`` is removed before ``model/`` is
written again (atomically, as a folder) and rewritten after it, so a run whose
``results.json`` exists has the ``model/`` it describes.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset, Subset
from transformers import PreTrainedTokenizerBase

from vilalign import distributed as dist
from vilalign.config import ConfigError, ModelConfig
from vilalign.data import SPLITS, Collator, DataConfig, build_dataset, build_transform
from vilalign.data.base import dataset_label_names as label_names
from vilalign.data.masking import PretrainingCollator
from vilalign.data.registry import dataset_info
from vilalign.io import atomic_dir, write_json_atomic
from vilalign.locks import folder_lock
from vilalign.model import VilbertModel, build_model, load_tokenizer, save_pretrained
from vilalign.model.encoders import build_vit, image_data_config
from vilalign.train import checkpoint as ckpt
from vilalign.train import fastpath
from vilalign.train.card import run_card
from vilalign.train.config import (
    FinetuneConfig,
    MultiTaskConfig,
    PresetModelConfig,
    PretrainConfig,
    RunConfig,
    SplitsConfig,
)
from vilalign.train.loop import EpochCallback, FitResult, Trainer, seed_everything
from vilalign.train.multitask import MultiTaskBatches, MultiTaskModule, MultiTaskTrainer, TaskData
from vilalign.train.tasks import FinetuneTask, PretrainingTask, Task, task_spec
from vilalign.train.tracker import Tracker

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
MODEL_DIR = "model"
CHANGES_FILE = "config_changes.json"

#: Settings a resumed run may change (dotted prefixes): the loop reads them afresh or
#: re-applies them over the loaded state (see Trainer.resume), so they take effect from
#: the resumed step on. Everything else (model, data, splits, batch sizes, seed,
#: objectives, monitor, precision) would make the checkpoint's state mean something else.
MID_RUN_CHANGEABLE = (
    "optim.", "train.epochs", "train.max_steps", "train.early_stopping.",
    "train.checkpoint.every_n_steps", "train.log_every_n_steps", "train.num_workers",
    "train.device", "train.progress", "train.fast.", "train.compile", "train.distributed.",
    "train.on_nonfinite",
)  # fmt: skip


@dataclass
class Splits:
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    fit: FitResult
    test_metrics: dict[str, float]
    run_dir: Path
    model_dir: Path


# ---------------------------------------------------------------------------- entry points


def holding_run_dir(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Run ``fn(cfg, run_dir, ...)`` holding the run folder (rank 0; the other ranks of a
    torchrun job are the same run). A second process gets one line naming the holder."""

    @functools.wraps(fn)
    def held(cfg: Any, run_dir: str | Path, *args: Any, **kwargs: Any) -> RunResult:
        if dist.env_rank() != 0:
            return fn(cfg, run_dir, *args, **kwargs)
        with folder_lock(run_dir, "run"):
            return fn(cfg, run_dir, *args, **kwargs)

    return held


@holding_run_dir
def run_finetuning(
    cfg: FinetuneConfig,
    run_dir: str | Path,
    init_from: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[EpochCallback] = (),
    tracker: Tracker | None = None,
) -> RunResult:
    """Fine-tune ``cfg.task_name`` on ``cfg.data``; ``init_from`` overrides ``cfg.init_from``."""
    run_dir = _start(cfg, run_dir, resume)[1]
    splits = build_splits(cfg)
    labels = {"num_labels": head_size(cfg.task_name, splits.train)}
    model_cfg = cfg.model.model_copy(update={**labels, "label_names": label_names(splits.train)})
    model = _initial_model(model_cfg, init_from or cfg.init_from)
    task = FinetuneTask(model, cfg.task_name)
    tokenizer = load_tokenizer(cfg.model.text)
    collate = Collator(tokenizer, max_length=cfg.model.text.max_length)
    return _fit_and_test(cfg, run_dir, task, splits, collate, tokenizer, resume, callbacks, tracker)


@holding_run_dir
def run_multitask(
    cfg: MultiTaskConfig,
    run_dir: str | Path,
    init_from: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[EpochCallback] = (),
    tracker: Tracker | None = None,
) -> RunResult:
    """Fine-tune one model on every dataset of ``cfg.datasets``, a head each (see
    :mod:`vilalign.train.multitask`); metrics are ``<split>/<dataset>/<name>``.

    ``model/`` holds the shared model without heads (to analyse or fine-tune further);
    the heads are in the checkpoints. With ``cfg.alignment`` the alignment is measured
    on every dataset after every epoch, into ``alignment/<dataset>/``.
    """
    device, run_dir = _start(cfg, run_dir, resume)
    data_config = image_data_config(
        build_vit(cfg.model.image, load_weights=False), cfg.model.image.img_size
    )
    splits = {
        name: dataset_splits(entry.data, entry.splits, data_config, cfg.train.seed)
        for name, entry in cfg.datasets.items()
    }
    model_cfg = cfg.model.model_copy(update={"num_labels": 0})  # the heads are the task's
    model = _initial_model(model_cfg, init_from or cfg.init_from)
    task = MultiTaskModule(
        model,
        {name: entry.task_name for name, entry in cfg.datasets.items()},
        {name: head_size(e.task_name, splits[name].train) for name, e in cfg.datasets.items()},
        {name: entry.loss_weight for name, entry in cfg.datasets.items()},
    )
    tokenizer = load_tokenizer(cfg.model.text)
    collate = Collator(tokenizer, max_length=cfg.model.text.max_length)
    batches = MultiTaskBatches(
        [TaskData(n, splits[n].train, e.batch_size, collate) for n, e in cfg.datasets.items()],
        cfg.sampling.mode,
        cfg.sampling.steps_per_epoch,
        cfg.train.seed,
        cfg.train.num_workers,
        fastpath.pin_memory(cfg.train.fast, device),
    )
    if cfg.alignment is not None:
        callbacks = [*callbacks, _alignment_callback(cfg, splits, tokenizer, run_dir)]
    trainer = MultiTaskTrainer(
        task,
        cfg.train,
        cfg.optim,
        run_dir,
        batches,
        {n: s.val for n, s in splits.items() if s.val is not None},
        tracker=tracker,
        callbacks=callbacks,
    )
    fit = trainer.fit(resume=resume)
    tests = {n: s.test for n, s in splits.items() if s.test is not None}
    names = {n: s.names for n, s in splits.items()}
    return _test_and_save(trainer, fit, tests or None, tokenizer, run_dir, names)


def _alignment_callback(
    cfg: MultiTaskConfig, splits: dict[str, Splits], tokenizer: Any, run_dir: Path
) -> EpochCallback:
    """Alignment on each dataset's val (or test) split after every epoch."""
    # (imported here: the analysis stack, pandas and scipy, only when a run asks for it)
    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import (
        ALIGN_PREFIX,
        ALIGNMENT_DIR,
        AlignmentTarget,
        EpochAlignment,
        alignment_loader,
    )

    a = cfg.alignment
    assert a is not None
    targets = []
    for name, entry in cfg.datasets.items():
        dataset = getattr(splits[name], a.split)
        if dataset is None:
            raise ConfigError(f"alignment.split: dataset {name!r} has no {a.split} split")
        split = splits[name].names[a.split]
        spec = a.spec(entry.data, split, cfg.model.text.max_length, cfg.train.seed)
        loader = alignment_loader(dataset, tokenizer, spec)
        info = RunInfo(seed=cfg.train.seed, dataset=name)
        out_dir = run_dir / ALIGNMENT_DIR / name
        prefix = f"{ALIGN_PREFIX}{name}/"
        targets.append(AlignmentTarget(spec, out_dir, info, prefix, loader=loader))
    return EpochAlignment(targets, tokenizer)


@holding_run_dir
def run_pretraining(
    cfg: PretrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    callbacks: Sequence[EpochCallback] = (),
    tracker: Tracker | None = None,
) -> RunResult:
    """Pretrain on ``cfg.data`` (image-caption pairs) with the configured objectives."""
    run_dir = _start(cfg, run_dir, resume)[1]
    splits = build_splits(cfg)
    model = build_model(cfg.model.model_copy(update={"num_labels": 0}))
    task = PretrainingTask(model, cfg.objectives)
    tokenizer = load_tokenizer(cfg.model.text)
    collate = pretraining_collator(cfg, model, tokenizer)
    return _fit_and_test(cfg, run_dir, task, splits, collate, tokenizer, resume, callbacks, tracker)


def _fit_and_test(
    cfg: RunConfig,
    run_dir: Path,
    task: Task,
    splits: Splits,
    collate: Any,
    tokenizer: PreTrainedTokenizerBase,
    resume: bool,
    callbacks: Sequence[EpochCallback],
    tracker: Tracker | None = None,
) -> RunResult:
    # tracker: None writes the run folder's metric files only (FileTracker).
    trainer = Trainer(
        task,
        cfg.train,
        cfg.optim,
        run_dir,
        splits.train,
        splits.val,
        collate,
        tracker=tracker,
        callbacks=callbacks,
    )
    fit = trainer.fit(resume=resume)
    return _test_and_save(trainer, fit, splits.test, tokenizer, run_dir, splits.names)


def _test_and_save(
    trainer: Trainer,
    fit: FitResult,
    test_data: Any,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    split_names: dict[str, Any],
) -> RunResult:
    """Test the best weights (``test_data``: what ``trainer.evaluate`` takes, or None),
    export the model, write results.json."""
    task = trainer.task
    if fit.best_checkpoint is not None:
        ckpt.load_weights(fit.best_checkpoint, task)  # test and export the best, not the last
    test = trainer.evaluate(test_data, "test") if test_data is not None else {}
    if test:
        trainer.tracker.log_metrics(test, trainer.progress.step, trainer.progress.epoch)
    model_dir = run_dir / MODEL_DIR
    if dist.is_main_process():
        # results.json says "finished, and model/ is this": gone while model/ changes
        (run_dir / RESULTS_FILE).unlink(missing_ok=True)
        with atomic_dir(model_dir) as tmp:
            save_pretrained(task.model, tmp, tokenizer, card=run_card(run_dir, test))
        _write_results(run_dir, fit, test, split_names, trainer.progress.skipped_steps)
    dist.barrier()
    return RunResult(fit, test, run_dir, model_dir)


# ---------------------------------------------------------------------------- setup


def _start(
    cfg: RunConfig | MultiTaskConfig, run_dir: str | Path, resume: bool
) -> tuple[torch.device, Path]:
    """The first steps of every run: join the process group (this process's device),
    prepare the run folder, seed."""
    device = dist.init_distributed(cfg.train.device, cfg.train.distributed.timeout_s)
    folder = _prepare_run_dir(cfg, run_dir, resume)
    seed_everything(cfg.train.seed)
    return device, folder


def _prepare_run_dir(cfg: PresetModelConfig, run_dir: str | Path, resume: bool) -> Path:
    """Create the run folder and write the resolved config; refuse to mix two runs.

    Resuming with other settings: those of :data:`MID_RUN_CHANGEABLE` are recorded as a
    change at the checkpoint's step (config.json then holds the settings in force); any
    other difference is an error listing them. Every rank checks (so all raise alike);
    rank 0 writes, the others wait for it.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    resolved = json.loads(cfg.model_dump_json())
    pointer = ckpt.read_pointer(run_dir / "checkpoints")
    if pointer is not None and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a run; resume it (resume=True) or pick a new folder"
        )
    changes = {}
    if pointer is not None and path.is_file():
        saved = _as_today(type(cfg), json.loads(path.read_text()))
        changes = _mid_run_changes(saved, resolved, run_dir)
    if dist.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        if changes:
            _record_changes(run_dir, int(pointer["step"]), changes)
        write_json_atomic(path, resolved)
    dist.barrier()
    return run_dir


def _as_today(kind: type[PresetModelConfig], saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json as today's schema reads it (a field added since appears at its
    default, as the run had it), so that a new version alone is no change of settings."""
    try:
        return json.loads(kind.model_validate(saved).model_dump_json())
    except ValueError:  # (pydantic's ValidationError is one) compared as it is
        return saved


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"optim.lr": [old, new], ...}`` over the leaves of two config dumps (a field
    absent from one, e.g. left out at its default, is ``None`` there)."""
    a, b = _leaves(old), _leaves(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _mid_run_changes(
    saved: dict[str, Any], resolved: dict[str, Any], run_dir: Path
) -> dict[str, list[Any]]:
    """The differences a resume may apply; raises listing those it may not."""
    changes = config_differences(saved, resolved)
    refused = {
        k: v
        for k, v in changes.items()
        if not any(k == p or k.startswith(p) for p in MID_RUN_CHANGEABLE)
    }
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"resume {run_dir}: these settings differ from its {CONFIG_FILE} and cannot change "
            f"in the middle of a run: {listed}. Resume with the saved settings, or start a new "
            "run in another folder"
        )
    return changes


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def _record_changes(run_dir: Path, step: int, changes: dict[str, list[Any]]) -> None:
    """Append ``{"step", "changes"}`` to config_changes.json (once: a kill before
    config.json is rewritten repeats the same record, which is not added twice)."""
    record = {"step": step, "changes": changes}
    recorded = read_config_changes(run_dir)
    if record not in recorded:
        write_json_atomic(run_dir / CHANGES_FILE, [*recorded, record])
    shown = ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
    logger.warning("resume: from step %d on, %s", step, shown)


def read_config_changes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The settings changes of a resumed run, in order (empty when none)."""
    path = Path(run_dir) / CHANGES_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def build_splits(cfg: RunConfig) -> Splits:
    """Train / val / test datasets with the right transform each (augmentation on train only)."""
    data_config = image_data_config(
        build_vit(cfg.model.image, load_weights=False), cfg.model.image.img_size
    )
    return dataset_splits(cfg.data, cfg.splits, data_config, cfg.train.seed)


def dataset_splits(
    data: DataConfig, splits: SplitsConfig, data_config: dict[str, Any], seed: int
) -> Splits:
    """:func:`build_splits` for one dataset, given the image encoder's data config."""
    known = SPLITS.get(data.name, ())
    train_split = splits.train or known[0]
    test_split = splits.test or ("test" if "test" in known else None)

    def load(split: str, as_train: bool) -> Dataset:
        transform = build_transform(data_config, data.augment, train=as_train)
        return build_dataset(data, split, transform)

    train = load(train_split, True)
    names = {"train": train_split}
    if splits.val is not None:
        val, names["val"] = load(splits.val, False), splits.val
    elif splits.val_fraction > 0:
        train, val = holdout(train, load(train_split, False), splits.val_fraction, seed)
        names["val"] = f"{splits.val_fraction:.0%} of {train_split}"
    else:
        val = None
    test = load(test_split, False) if test_split is not None else None
    if test_split is not None:
        names["test"] = test_split
    return Splits(train, val, test, names)


def head_size(task_name: str, train: Dataset) -> int:
    """Outputs of a task's head: 1 for a binary task, else the data's label count (VQA's
    answer vocabulary), else the task's."""
    spec = task_spec(task_name)
    if spec.loss == "binary":
        return 1
    return getattr(train, "num_labels", None) or spec.num_labels


def holdout(
    train: Dataset, train_as_eval: Dataset, fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    """Split a training set into (train, val) by a seeded permutation of indices.

    ``train_as_eval`` is the same split read with the evaluation transform, so the
    held-out part is not augmented. ``num_labels`` is carried over to the subsets.
    """
    n = len(train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(fraction * n))
    subsets = Subset(train, order[cut:]), Subset(train_as_eval, order[:cut])
    for subset in subsets:
        if hasattr(train, "num_labels"):
            subset.num_labels = train.num_labels
    return subsets


def pretraining_collator(
    cfg: PretrainConfig, model: VilbertModel, tokenizer: PreTrainedTokenizerBase
) -> PretrainingCollator:
    side = round(model.num_patches**0.5)
    if side * side != model.num_patches:
        raise ConfigError(f"image: MIM needs a square patch grid, got {model.num_patches} patches")
    obj = cfg.objectives
    # Streamed captions (CC3M) never repeat within a worker's epoch: remembering their
    # token ids would only grow every worker's memory (KBs per caption, up to its cap).
    text_cache = {"text_cache_size": 0} if dataset_info(cfg.data.name).streaming else {}
    return PretrainingCollator(
        Collator(tokenizer, max_length=cfg.model.text.max_length, **text_cache),
        tokenizer,
        (side, side),
        mlm_probability=obj.mlm.probability if obj.mlm.weight > 0 else None,
        mim_ratio=obj.mim.ratio if obj.mim.weight > 0 else None,
        mim_pattern=obj.mim.pattern,
        ap_negative_ratio=obj.ap.negative_ratio if obj.ap.weight + obj.itc.weight > 0 else 0.0,
        mlm_on_negatives=obj.mlm.on_negatives,
        seed=cfg.train.seed,  # negatives: from other images, by Sample.image_id
    )


# ---------------------------------------------------------------------------- weights


def _initial_model(model_cfg: ModelConfig, source: str | Path | None) -> VilbertModel:
    """The model to train: built from ``model_cfg``, with ``source``'s weights if given."""
    model = build_model(model_cfg)
    if source is not None:
        load_encoder_weights(model, source)
    return model


def load_encoder_weights(model: VilbertModel, source: str | Path) -> None:
    """Load pretrained weights into ``model``, all but a task head of another size.

    ``source`` is a ``save_pretrained`` folder or a run folder holding one in ``model/``.
    Every other missing or unexpected key is an error naming the keys.
    """
    source = Path(source)
    folder = source / MODEL_DIR if (source / MODEL_DIR / "model.safetensors").is_file() else source
    file = folder / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"init_from: no model.safetensors in {source} or {source}/model")
    state = load_file(str(file))
    own = model.state_dict()
    # A new task head (other label count, or none in a pretrained model) starts fresh.
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith("head.") or (k in own and own[k].shape == v.shape)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(
            f"init_from {file}: does not match the model: missing {missing}, "
            f"unexpected {unexpected}"
        )
    logger.info("initialised from %s", file)


def _write_results(
    run_dir: Path,
    fit: FitResult,
    test: dict[str, float],
    split_names: dict[str, Any],
    skipped_steps: int = 0,
) -> None:
    results = {
        "splits": split_names,
        "epochs": len(fit.history),
        "best_value": fit.best_value,
        "best_checkpoint": str(fit.best_checkpoint) if fit.best_checkpoint else None,
        "stopped_early": fit.stopped_early,
        "last_epoch": fit.history[-1] if fit.history else {},
        "test": test,
    }
    if skipped_steps:  # (train.on_nonfinite: skip)
        results["skipped_steps"] = skipped_steps
    changes = read_config_changes(run_dir)
    if changes:  # settings changed on resume, each from its step on
        results["config_changes"] = changes
    write_json_atomic(run_dir / RESULTS_FILE, results)

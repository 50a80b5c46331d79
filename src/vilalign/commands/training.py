"""``vilalign pretrain`` and ``vilalign finetune``: one run from a run file."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vilalign.commands import (
    add_command,
    add_device,
    add_no_progress,
    add_output_dir,
    add_overrides,
    add_threads,
    run_file_overrides,
)

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "pretrain",
        help="pretrain on image-caption data (MLM, MIM, AP, ITC)",
        description=(
            "Pretrain a two-stream model with the objectives named in the run file "
            "(objectives: mlm/mim/ap/itc with weights). Writes config.json, metrics.jsonl/.csv, "
            "metrics.png, checkpoints/ and model/ (the weights to fine-tune from) into "
            "--output-dir. "
            "On several GPUs: torchrun --nproc_per_node N -m vilalign pretrain RUN_FILE "
            "(see docs/runbook.md)."
        ),
    )
    _common(p)
    p.set_defaults(handler=run_pretrain)

    p = add_command(
        sub,
        "finetune",
        help="fine-tune on a downstream task",
        description=(
            "Fine-tune on a downstream dataset (hateful_memes, mmimdb, food101, vqa, easyvqa) "
            "with the task's loss and metrics; evaluates the best checkpoint on the test split. "
            "A run file with a 'datasets:' mapping (name -> task, data, splits, batch_size, "
            "loss_weight) fine-tunes one model on all of them at once, a head each, as in "
            "vilbert-multi-task: every step takes one dataset's batch, chosen by "
            "'sampling: {mode: round_robin | proportional, steps_per_epoch: N}'; metrics are "
            "reported per dataset (val/<name>/accuracy, ...) plus val/mean, the mean of each "
            "dataset's own metric. See configs/multitask_hm_food101.yaml."
        ),
    )
    _common(p)
    p.add_argument(
        "--from",
        dest="init_from",
        type=Path,
        help="start from a pretrained model folder or pretraining run directory",
    )
    p.set_defaults(handler=run_finetune)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="run file (YAML or JSON)")
    add_output_dir(p, None, "output folder (default: runs/<run file name>)", old=("--run-dir",))
    p.add_argument("--resume", action="store_true", help="continue an interrupted run exactly")
    add_overrides(p, "the run file", "--set train.epochs=2 --set model.coattention_layers=[1]")
    add_device(p, None, "where the run trains: auto (CUDA when present), cpu, cuda, cuda:N; "
               "sets train.device (default: the run file's, auto unless set)")  # fmt: skip
    add_threads(p)
    add_no_progress(p)
    p.add_argument(
        "--tracking-uri",
        help="MLflow store for the run's parameters, metrics and files (default: "
        "sqlite:///<folder above the output folder>/mlflow.db; view with mlflow ui "
        "--backend-store-uri)",
    )
    p.add_argument("--experiment", default="vilalign", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="write the run folder's files only")


def _run_dir(args: argparse.Namespace) -> Path:
    return args.output_dir or Path("runs") / args.config.stem


def _summary(result: Any) -> None:
    from vilalign.distributed import cleanup, is_main_process

    main = is_main_process()
    cleanup()  # leave the process group (torchrun) before the process ends
    if not main:
        return
    last = result.fit.history[-1] if result.fit.history else {}
    print(f"run directory: {result.run_dir}")
    print(f"model (best weights): {result.model_dir}")
    shown = {
        k: round(v, 4) for k, v in {**last, **result.test_metrics}.items() if isinstance(v, float)
    }
    print(json.dumps(shown, indent=2))


@contextlib.contextmanager
def _tracked(args: argparse.Namespace, cfg: Any, stage: str) -> Iterator[Any]:
    """An MLflow tracker for the run (None: files only, or a rank other than 0); the MLflow
    run is marked finished with the run's files, or failed if the run raises. The run
    folder is held first: a second process must not touch the first one's MLflow run."""
    from vilalign.distributed import env_rank

    if args.no_tracking or env_rank() != 0:
        yield None
        return
    from vilalign.experiments.tracking import RunStore, closing_on_error, default_uri
    from vilalign.locks import folder_lock
    from vilalign.train.checkpoint import read_pointer

    run_dir = _run_dir(args).resolve()
    with folder_lock(run_dir, "run"):
        if not args.resume and read_pointer(run_dir / "checkpoints") is not None:
            yield None  # the run refuses the occupied folder; its MLflow run stays as it was
            return
        uri = args.tracking_uri or default_uri(run_dir.parent)
        command = f"vilalign {stage}"
        store = RunStore(uri, args.experiment, run_dir.parent / "mlartifacts", command)
        tags = {"stage": stage, "run_file": str(args.config)}
        params = {"config": json.loads(cfg.model_dump_json())}
        tracker = store.tracker(run_dir, run_dir.name, tags, params)
        logger.info("tracking the run in MLflow at %s (experiment %r)", uri, args.experiment)
        with closing_on_error(store, tracker.run_id):
            yield tracker
        alignment = run_dir / "alignment"  # (a multi-dataset run: a folder per dataset)
        store.finish(run_dir, [alignment, *sorted(p for p in alignment.glob("*") if p.is_dir())])


def run_pretrain(args: argparse.Namespace) -> int:
    from vilalign.train.config import PretrainConfig, load_run_config
    from vilalign.train.run import run_pretraining

    cfg = load_run_config(args.config, PretrainConfig, **run_file_overrides(args, ["train"]))
    with _tracked(args, cfg, "pretrain") as tracker:
        result = run_pretraining(cfg, _run_dir(args), resume=args.resume, tracker=tracker)
    _summary(result)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from vilalign.config import deep_merge, read_mapping
    from vilalign.train.config import (
        FinetuneConfig,
        MultiTaskConfig,
        is_multitask_mapping,
        load_run_config,
    )
    from vilalign.train.run import run_finetuning, run_multitask

    overrides = run_file_overrides(args, ["train"])
    multi = is_multitask_mapping(deep_merge(read_mapping(args.config), overrides))
    kind, run = (MultiTaskConfig, run_multitask) if multi else (FinetuneConfig, run_finetuning)
    cfg = load_run_config(args.config, kind, **overrides)
    with _tracked(args, cfg, "finetune") as tracker:
        result = run(
            cfg, _run_dir(args), init_from=args.init_from, resume=args.resume, tracker=tracker
        )
    _summary(result)
    return 0

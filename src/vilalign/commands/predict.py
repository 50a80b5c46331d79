"""``vilalign predict``: a checkpoint's predictions on a split, in the dataset's own format."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    DATASET_HELP,
    ROOT_HELP,
    add_command,
    add_device,
    add_no_progress,
    add_output_dir,
    add_threads,
    check_device,
    data_config,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "predict",
        help="write a checkpoint's predictions in the file each benchmark reads",
        description=(
            "Run a fine-tuned checkpoint over a split and write, per dataset, the file its "
            "community submits or reads, with its metrics when the split has labels: VQA v2 "
            "the official results JSON (and the official accuracy per answer and question "
            "type on train/val), Hateful Memes the challenge CSV (id,proba,label) with AUROC "
            "and accuracy, MM-IMDb the genres with per-genre F1 (micro, macro, weighted, "
            "samples averages), Food-101 top-1/top-5, easy-VQA accuracy per question family; "
            "any other dataset a CSV and its task's metrics. Also <dataset>_<split>_metrics.json."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="a fine-tuned model folder (save_pretrained, e.g. runs/ft/model) or a Hub repo id",
    )
    p.add_argument("--dataset", default="easyvqa", help=DATASET_HELP)
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--split", default="test", help="split to predict")
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="only the first N samples (a quick look; a submission needs every sample)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="samples per forward pass"
    )
    add_device(p)
    add_threads(p)
    add_no_progress(p)
    add_output_dir(p, Path("runs/predict"), "output folder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.model.checkpoint import (
        load_checkpoint_tokenizer,
        load_pretrained,
        resolve_folder,
    )
    from vilalign.predictions import predict_split

    device = check_device(args.device)
    data = data_config(args, limit=args.limit)  # (checked before the model loads)
    folder = resolve_folder(args.checkpoint)
    model = load_pretrained(folder).to(device)
    tokenizer = load_checkpoint_tokenizer(folder)
    report = predict_split(
        model, tokenizer, data, args.split, args.output_dir, args.batch_size, args.progress
    )
    for name, value in report.metrics.items():
        print(f"{name}: {value:.4f}")
    for path in report.files:
        print(f"wrote {path}")
    return 0

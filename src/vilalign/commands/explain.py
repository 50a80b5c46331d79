"""``vilalign explain``: which words and image regions drove a prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_output_dir,
    add_source_args,
    analysis_command,
    check_device,
    evaluation_dataset,
    load_source,
)

METHODS = ("relevancy", "gradcam", "integrated_gradients")
IDS_HELP = (
    "comma list of sample ids, as the dataset's reader names them: easyvqa <split>-<n> "
    "(test-0: question 0 of the test split), easyvqa_captions <split>-img<image>-<k>, "
    "hateful_memes the 'id' of the .jsonl line, mmimdb the movie id, food101 the image file "
    "name, vqa the question_id, coco_karpathy / flickr30k_karpathy <imgid>#<caption>. "
    "`vilalign data ids DATASET SPLIT` lists them"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "explain",
        help="attribute predictions to words and image patches",
        description=(
            "For the samples named by --ids, attribute the predicted (or --target) class to "
            "the text tokens and image patches: bi-modal relevancy (Chefer et al. 2021), "
            "Grad-CAM on patch states, integrated gradients (captum). Writes a heat-map PNG "
            "over each image and an HTML page of coloured tokens into --output-dir."
        ),
    )
    add_source_args(p)
    p.add_argument("--ids", required=True, help=IDS_HELP)
    p.add_argument("--method", default="relevancy", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
    add_output_dir(p, Path("runs/explain"), "output folder", old=("--run-dir",))
    analysis_command(p, "explain", run)  # (its folder held, its files to MLflow)


def find_samples(dataset, ids: list[str]) -> list[int]:
    """Indices of ``ids`` in ``dataset``; an unknown id is an error naming it."""
    records = getattr(dataset, "records", None)
    known = (
        {r.id: i for i, r in enumerate(records)}
        if records is not None
        else {dataset[i].id: i for i in range(len(dataset))}
    )
    missing = [i for i in ids if i not in known]
    if missing:
        example = ", ".join(list(known)[:3])
        raise ValueError(
            f"--ids: not in the dataset: {missing} (ids look like: {example}; "
            "`vilalign data ids DATASET SPLIT` lists them)"
        )
    return [known[i] for i in ids]


def run(args: argparse.Namespace) -> int:
    from vilalign.analysis.attribution import explain, save_explanations
    from vilalign.data import Collator
    from vilalign.model.labels import output_name

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--method: unknown {unknown} (allowed: {', '.join(METHODS)})")
    device = check_device(args.device)
    if args.checkpoint is None:
        # An untrained model with a fresh head: the model-randomisation reference.
        probe, _, _ = load_source(args, device)
        labels = getattr(evaluation_dataset(args, probe), "num_labels", 2)
        model, tokenizer, _ = load_source(args, device, num_labels=labels)
    else:
        model, tokenizer, _ = load_source(args, device)
    if model.head is None:
        raise ValueError("the model has no task head (num_labels=0): explain a fine-tuned model")
    dataset = evaluation_dataset(args, model)
    ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    collate = Collator(tokenizer, max_length=model.config.text.max_length)
    batch = collate([dataset[i] for i in find_samples(dataset, ids)])
    config, cfg = model.image_data_config, model.config
    for method in methods:
        explanations = explain(model, batch, args.target, method, tokenizer)
        paths = save_explanations(
            explanations,
            batch.pixel_values,
            args.output_dir,
            config["mean"],
            config["std"],
            index=f"{method}.html",
        )
        for e in explanations:
            target, predicted = output_name(cfg, e.target), output_name(cfg, e.predicted)
            print(f"{method}: {e.id} target {e.target} {target!r} (predicted {predicted!r})")
        print(f"wrote {len(paths)} files, index {args.output_dir / f'{method}.html'}")
    return 0

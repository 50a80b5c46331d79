"""``vilalign attention``: where the heads look, and whether co-attention is more focused."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_output_dir,
    add_source_args,
    analysis_command,
    check_sample_count,
    evaluation_dataset,
    load_source,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "attention",
        help="attention entropy per head and direction; co- vs self-attention focus test",
        description=(
            "Run the model with attention weights on N samples, compute the entropy of every "
            "head in every layer and direction (text self, image self, text->image, "
            "image->text; normalised by log of the real key count), test whether "
            "co-attention heads have lower entropy than self-attention heads (one-sided "
            "Mann-Whitney U and permutation test on head means), and export one sample's "
            "attention as a bertviz HTML page. Writes into --output-dir. --hf-model reads a "
            "published model's fusion layers the same way (no bertviz page for it)."
        ),
    )
    add_source_args(p, published=True)
    p.add_argument(
        "--n-samples", type=positive_int, default=256, metavar="N", help="samples to read"
    )
    p.add_argument(
        "--bertviz-sample",
        type=int,
        metavar="I",
        default=0,
        help="sample shown in the HTML view (its position among the samples read)",
    )
    add_output_dir(p, Path("runs/attention"), "output folder", old=("--run-dir",))
    analysis_command(p, "attention", run)  # (its folder held, its files to MLflow)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from vilalign.analysis.attention import (
        attention_entropy,
        compare_by_layer,
        compare_coattention_focus,
        export_bertviz,
        head_means,
    )
    from vilalign.data import Collator

    model, tokenizer, _ = load_source(args)
    published = getattr(args, "hf_model", None) is not None
    dataset = evaluation_dataset(args, model)
    check_sample_count(dataset, args.n_samples, args.split, images=False)
    subset = Subset(dataset, range(args.n_samples))
    if not 0 <= args.bertviz_sample < len(subset):
        raise ValueError(
            f"--bertviz-sample: {args.bertviz_sample} is not one of the {len(subset)} samples read "
            f"(0 to {len(subset) - 1})"
        )
    if published:  # the model's own processor; entropy through its adapter
        from vilalign.adapters import attention_entropy as published_entropy

        collate = model.collator(model.max_text_length)
        loader = DataLoader(subset, batch_size=args.batch_size, collate_fn=collate)
        frame = published_entropy(model, loader)
    else:
        collate = Collator(tokenizer, max_length=model.config.text.max_length)
        loader = DataLoader(subset, batch_size=args.batch_size, collate_fn=collate)
        frame = attention_entropy(model, loader)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    files = [args.output_dir / "attention_entropy.csv", args.output_dir / "attention_heads.csv"]
    frame.to_csv(files[0], index=False)
    head_means(frame).to_csv(files[1], index=False)
    if frame.layer_kind.nunique() > 1:
        print(compare_coattention_focus(frame).summary())
        by_layer = compare_by_layer(frame)
        files.append(args.output_dir / "attention_focus_by_layer.csv")
        by_layer.to_csv(files[-1], index=False)
    else:
        print("only one kind of layer: no co- vs self-attention comparison")
    if not published:  # bertviz labels patches by their grid position: vilalign's ViT only
        batch = collate([subset[args.bertviz_sample]])
        files.append(export_bertviz(model, batch, args.output_dir / "attention.html", tokenizer))
    for path in files:
        print(f"wrote {path}")
    return 0

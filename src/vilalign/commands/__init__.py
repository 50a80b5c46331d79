"""Sub-commands of ``vilalign``: modules with ``add_parser(subparsers)`` (one or more commands)."""

from __future__ import annotations

import argparse
import importlib

# Order = order in `vilalign --help`.
COMMANDS = (
    "demo", "training", "run", "tune", "analyse", "attention", "explain", "report", "info", "cache",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in COMMANDS:
        importlib.import_module(f"vilalign.commands.{name}").add_parser(subparsers)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset and --baseline, shared by the commands that build a model."""
    p.add_argument(
        "--preset", default="tiny", help="model preset: tiny, base or minilm (default: tiny)"
    )
    p.add_argument(
        "--baseline",
        default="vilbert",
        help="vilbert, no_coattention, concat_features, random_text, single_stream, "
        "text_only or image_only (default: vilbert)",
    )


def add_source_args(p: argparse.ArgumentParser, published: bool = False) -> None:
    """--checkpoint or --preset (or, with ``published``, --hf-model), and the dataset to
    read: shared by the analysis commands."""
    from pathlib import Path

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a model folder written by save_pretrained")
    src.add_argument("--preset", help="use a freshly built (untrained) model of this preset")
    if published:
        src.add_argument(
            "--hf-model",
            metavar="NAME_OR_FOLDER",
            help="a published Hugging Face model, by hub name or saved folder: BridgeTower, "
            "ViLT, CLIP, SigLIP, LXMERT, VisualBERT (docs/adapters.md); read with its own "
            "processor (HF_HUB_OFFLINE=1: nothing is downloaded)",
        )
        p.add_argument(
            "--regions",
            type=Path,
            help="--hf-model LXMERT / VisualBERT: the region-feature file (.npz, or a folder "
            "of .npy) they read instead of pixels; vilalign runs no detector",
        )
    p.add_argument("--dataset", default="easyvqa", help="dataset name (default: easyvqa)")
    p.add_argument("--root", help="dataset folder (not needed for easyvqa)")
    p.add_argument("--split", default="test", help="split to read (default: test)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def load_source(args: argparse.Namespace, num_labels: int = 0):
    """(model, tokenizer, run name) from --checkpoint (with its saved tokenizer) or --preset,
    or (adapter, processor, name) from --hf-model.

    A --preset model gets a fresh task head with ``num_labels`` outputs (0: none).
    """
    from pathlib import Path

    import torch

    from vilalign.config import model_config
    from vilalign.model import build_model, load_pretrained, load_tokenizer
    from vilalign.model.checkpoint import TOKENIZER_DIR

    torch.manual_seed(args.seed)
    if getattr(args, "regions", None) and not getattr(args, "hf_model", None):
        raise ValueError("--regions: only --hf-model LXMERT / VisualBERT read region features")
    if getattr(args, "hf_model", None):
        from vilalign.adapters import load_hf_model

        adapter = load_hf_model(args.hf_model, regions=args.regions)
        return adapter, adapter.processor, Path(args.hf_model).name
    if args.checkpoint is None:
        model = build_model(model_config(args.preset, num_labels=num_labels))
        return model, load_tokenizer(model.config.text), f"{args.preset}-untrained"
    model = load_pretrained(args.checkpoint)
    tok_dir = args.checkpoint / TOKENIZER_DIR
    if tok_dir.is_dir():
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(tok_dir), args.checkpoint.name
    return model, load_tokenizer(model.config.text), args.checkpoint.name


def evaluation_dataset(args: argparse.Namespace, model):
    """The dataset named by --dataset/--root/--split with the evaluation transform (for a
    published model: its images as they are, for its own processor)."""
    from vilalign.adapters import Adapter, adapter_dataset
    from vilalign.analysis.pipeline import evaluation_dataset as build
    from vilalign.data import DataConfig

    data = DataConfig(name=args.dataset, root=args.root)
    if isinstance(model, Adapter):  # raw images: the model's own processor prepares them
        return adapter_dataset(model, data, args.split)
    return build(model, data, args.split)

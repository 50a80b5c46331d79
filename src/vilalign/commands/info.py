"""``vilalign info``: a model's layer layout and parameter counts."""

from __future__ import annotations

import argparse

from vilalign.commands import add_command, add_model_args, add_overrides, model_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "info",
        help="show a model's layers and parameter counts",
        description="Build a model from a preset (weights not loaded) and describe it.",
    )
    add_model_args(p)
    add_overrides(p, "the preset's model config", "--set model.depth=6")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.config import model_config
    from vilalign.model import apply_baseline, build_model
    from vilalign.model.fusion import layer_title

    cfg = model_config(args.preset, **model_overrides(args.overrides))
    cfg = apply_baseline(cfg, args.baseline)
    model = build_model(cfg, load_weights=False)
    total = sum(p.numel() for p in model.parameters())
    print(f"preset {args.preset!r}, baseline {args.baseline!r}: {total / 1e6:.2f} M parameters")
    for name, module in (
        ("text encoder", model.text_encoder),
        ("image encoder", model.image_encoder),
        ("fusion layers", model.fusion_layers),
    ):
        print(f"  {name:<14} {sum(p.numel() for p in module.parameters()) / 1e6:8.2f} M")
    for i, kind in enumerate(cfg.layer_kinds):
        print(f"  fusion layer {i}: {layer_title(kind)}")
    print(f"  image input {model.image_data_config['input_size']}, fusion {cfg.fusion!r}")
    return 0

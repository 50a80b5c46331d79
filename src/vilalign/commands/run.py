"""``vilalign run``: every cell of an experiment file (pretrain → fine-tune → analyse)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vilalign.commands import (
    add_command,
    add_device,
    add_no_progress,
    add_output_dir,
    add_overrides,
    add_threads,
    run_file_overrides,
)

#: Where --device goes in an experiment file (the runner's analyses follow finetune's).
TRAIN_PATHS = ("pretrain.train", "finetune.train")
DEVICE_HELP = (
    "where every run of the grid trains and is analysed: auto (CUDA when present), cpu, "
    "cuda, cuda:N; sets pretrain.train.device and finetune.train.device, which are part "
    "of each run's config, so pass the same value when finishing a grid "
    "(default: the file's, auto unless set)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "run",
        help="run an experiment grid (pretrain, fine-tune, analyse; resumable)",
        description=(
            "Run every cell of EXPERIMENT (a YAML/JSON experiment file: base config, grid of "
            "baselines / pretraining objectives / co-attention placements / datasets / seeds, "
            "analyses). Finished cells are skipped and an interrupted cell resumes, so running "
            "the same command again finishes only what is missing. Writes per-cell folders, "
            "summary tables (mean ± std over seeds) and report.html into the output folder."
        ),
    )
    p.add_argument("experiment", type=Path, help="experiment file (YAML or JSON)")
    add_output_dir(p, None, "output folder (default: the file's output_dir, else runs/<name>)")
    add_overrides(p, "the experiment file", "--set grid.seeds=[0,1] --set finetune.train.epochs=2")
    add_device(p, None, DEVICE_HELP)
    add_threads(p)
    add_no_progress(p)
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for the run store (default: the file's tracking.uri, "
        "else sqlite:///<output folder>/mlflow.db)",
    )
    p.add_argument("--no-tracking", action="store_true", help="do not record runs in MLflow")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.report import write_report
    from vilalign.experiments.runner import run_experiment
    from vilalign.experiments.spec import load_experiment
    from vilalign.experiments.tracking import tracker_factory

    overrides = run_file_overrides(args, TRAIN_PATHS)
    exp = load_experiment(args.experiment, **overrides)
    out = args.output_dir or exp.resolved_output_dir()
    factory = None if args.no_tracking else tracker_factory(exp, out, args.tracking_uri)
    result = run_experiment(exp, out, factory, progress=args.progress)
    print(f"{len(result.ran)} cell(s) run, {len(result.skipped)} already done, in {out}")
    for folder, why in result.stale.items():  # (settings changed, or left the grid)
        print(f"  cell {folder.rsplit('_', 1)[0]} {why}: kept in {out}/stale_cells/{folder}")
    if result.groups is not None and not result.groups.empty:
        print(summary_text(result.groups))
    if not args.no_report:
        print(f"report: {write_report(out)}")
    if factory is not None:
        print(f"runs recorded in MLflow: mlflow ui --backend-store-uri {factory.store.uri}")
    return 0


def summary_text(groups) -> str:
    """Group, then each test metric as mean ± std (n)."""
    from vilalign.experiments.runner import metric_columns

    metrics = metric_columns(groups)
    lines = []
    for _, g in groups.iterrows():
        parts = [
            f"{m} {g[m]:.4f}" + (f" ± {g[m + '_std']:.4f}" if g[m + "_n"] > 1 else "")
            for m in metrics
        ]
        lines.append(
            f"  {g['group']:<40} " + "  ".join(parts) + f"  (n={g[metrics[0] + '_n']})"
            if metrics
            else f"  {g['group']}"
        )
    return "\n".join(lines)

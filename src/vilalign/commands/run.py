"""``vilalign run``: every cell of an experiment file (pretrain → fine-tune → analyse)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
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
    p.add_argument("--output-dir", type=Path, help="override the file's output_dir")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI for the run store (default: the file's tracking.uri, "
        "else sqlite:///<output_dir>/mlflow.db)",
    )
    p.add_argument("--no-tracking", action="store_true", help="do not record runs in MLflow")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (1 is fastest on a CPU shared with other jobs)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.report import write_report
    from vilalign.experiments.runner import run_experiment
    from vilalign.experiments.spec import load_experiment
    from vilalign.experiments.tracking import tracker_factory

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    exp = load_experiment(args.experiment)
    out = args.output_dir or exp.resolved_output_dir()
    factory = None if args.no_tracking else tracker_factory(exp, out, args.tracking_uri)
    result = run_experiment(exp, out, factory, progress=not args.no_progress)
    print(f"{len(result.ran)} cell(s) run, {len(result.skipped)} already done, in {out}")
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

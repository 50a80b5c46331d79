"""``vilalign tune``: an Optuna study over an experiment file's search space."""

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
from vilalign.commands.run import TRAIN_PATHS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "tune",
        help="tune hyper-parameters with Optuna (pruning, multi-objective, resumable)",
        description=(
            "Run an Optuna study over the 'tune' section of EXPERIMENT: the search space "
            "(dotted paths such as finetune.optim.lr), one or more objectives (a metric, a "
            "direction, optionally a dataset), sampler and pruner. One objective: median or "
            "Hyperband pruning on the per-epoch metric. Several: the Pareto front, no pruning. "
            "The study lives in a SQLite file (OUTPUT_DIR/optuna.db) or any RDB URL, so running "
            "the command again continues it and several workers can share it. Writes "
            "trials.csv and best_experiment.yaml (ready for `vilalign run`) or pareto_front.csv."
        ),
    )
    p.add_argument("experiment", type=Path, help="experiment file with a 'tune' section")
    add_output_dir(p, None, "output folder (default: the file's output_dir + /tune)")
    add_overrides(p, "the experiment file", "--set tune.n_trials=50 --set finetune.train.epochs=2")
    add_device(
        p,
        None,
        "where the trials train: auto (CUDA when present), cpu, cuda, cuda:N; sets "
        "pretrain.train.device and finetune.train.device (default: the file's, auto unless set)",
    )
    add_threads(p)
    add_no_progress(p)
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUTPUT_DIR/optuna.db)")
    p.add_argument("--n-trials", type=int, help="trials in this invocation (default: the file's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vilalign.experiments.spec import load_experiment
    from vilalign.experiments.tune import run_study

    # Trials run in folders of their own, so train.progress may change between invocations.
    exp = load_experiment(args.experiment, **run_file_overrides(args, TRAIN_PATHS))
    out = args.output_dir or exp.resolved_output_dir() / "tune"
    result = run_study(exp, out, args.storage, args.n_trials, args.timeout)
    states = {}
    for t in result.study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    print(f"study {result.study.study_name!r}: {result.n_trials} trials ({summary})")
    label = "best trial" if len(result.best) == 1 else "Pareto front"
    print(f"{label}:")
    for b in result.best:
        values = ", ".join(f"{v:.4g}" for v in b["values"])
        print(f"  trial {b['number']}: {values}  {b['params']}")
    for path in result.files:
        print(f"wrote {path}")
    return 0

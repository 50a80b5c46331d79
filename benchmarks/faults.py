"""Fault-injection sweeps: kill vilalign at random moments and at every protocol step, run
it again, and compare with an uninterrupted run; two writers on one folder; the table of
bad inputs.

    python benchmarks/faults.py --random 20            # pretrain, finetune, grid, tune
    python benchmarks/faults.py --protocol             # every rename/write of a finetune
    python benchmarks/faults.py --concurrent           # two writers on each kind of folder
    python benchmarks/faults.py --bad-inputs           # the table of docs/robustness.md
    [--kinds finetune grid] [--seed 0] [--out /tmp/faults]

Every run is a ``vilalign`` command (``vilalign.cli.main``) in a child forked from this
process, which imported the library once: a run starts in milliseconds, and a SIGKILL is a
real one (no ``finally``, no ``except``). A killed run is run again (``--resume`` for single
runs; grids and studies continue by themselves) and must end equal to the uninterrupted
run: the same weights (bytes of ``model/model.safetensors``), results and metric records
(timings aside), nothing lost and nothing twice; in MLflow no run left RUNNING.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the catalogue and the toy run live in tests/

SMALL = {"text": {"num_layers": 1, "max_length": 12}, "image": {"img_size": 32, "depth": 1},
         "depth": 2, "coattention_layers": [1]}  # fmt: skip
TRAIN = {"batch_size": 8, "epochs": 2, "progress": False, "log_every_n_steps": 1,
         "checkpoint": {"every_n_steps": 2}}  # fmt: skip
RUN = {"preset": "tiny", "model": SMALL, "splits": {"val_fraction": 0.25}, "train": TRAIN}
FINETUNE = {**RUN, "task": "easyvqa", "data": {"name": "easyvqa", "limit": 48}}
PRETRAIN = {**RUN, "data": {"name": "easyvqa_captions", "limit": 32}}
GRID = {
    "name": "faults", "preset": "tiny", "model": SMALL,
    "pretrain": {"data": PRETRAIN["data"], "splits": RUN["splits"], "train": TRAIN},
    "finetune": {"task": "easyvqa", "data": FINETUNE["data"], "splits": RUN["splits"],
                 "train": TRAIN},
    "grid": {"pretraining": ["mlm+ap"], "seeds": [0, 1]},
    "analysis": {"n_samples": 24, "batch_size": 24, "measures": ["cka_linear"],
                 "views": ["cls"], "null_band": 3, "attention_samples": 24,
                 "attribution_examples": 1},
}  # fmt: skip
TUNE = {
    **GRID,
    "grid": {"seeds": [0]},
    "tracking": {"enabled": False},
    "tune": {
        "n_trials": 3,
        "sampler": "random",
        "pruner": "none",
        "space": {"finetune.optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3}},
    },
}
TRIAL_LRS = [3e-4, 1e-3, 2e-3]
TIMING = ("samples_per_s", "data_wait_share", "wall_s", "time_s")


# ---------------------------------------------------------------------------- children


def spawn(log: Path, work: Callable[[], int]) -> int:
    """Fork a child running ``work`` (its return value: the exit code; output to ``log``);
    the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # pragma: no cover
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        code = work()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli(argv: list[str], before: Callable[[], Any] | None = None) -> Callable[[], int]:
    """``vilalign argv`` as a child's work (``before``: set up in the child first)."""

    def work() -> int:
        from vilalign.cli import main

        if before is not None:
            before()
        return main(argv)

    return work


def done(work: Callable[[], None]) -> Callable[[], int]:
    def wrapped() -> int:
        work()
        return 0

    return wrapped


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run(argv: list[str], log: Path, before: Callable[[], Any] | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    code = wait(spawn(log, cli(argv, before)))
    return code, time.perf_counter() - start


def run_killed(argv: list[str], log: Path, after_s: float) -> bool:
    """Run, SIGKILL after ``after_s`` seconds; True when the kill came before the end."""
    pid = spawn(log, cli(argv))
    deadline = time.monotonic() + after_s
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return wait(pid) == -signal.SIGKILL


# ---------------------------------------------------------------------------- outcomes


def untimed(value: Any) -> Any:
    """``value`` without timing fields and with absolute paths cut to their last parts."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not str(k).endswith(TIMING)}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return "/".join(value.split("/")[-3:])
    return value


def run_outcome(run_dir: Path) -> dict[str, Any]:
    """A finished single run: its model, results, metric records and pointers."""
    from vilalign.train import checkpoint as ckpt
    from vilalign.train.tracker import FileTracker

    records = [untimed(r) for r in FileTracker(run_dir).records()]
    return {
        "model": (run_dir / "model" / "model.safetensors").read_bytes(),
        "results": untimed(json.loads((run_dir / "results.json").read_text())),
        "records": records,
        "latest": untimed(ckpt.read_pointer(run_dir / "checkpoints")),
    }


def grid_outcome(out: Path) -> dict[str, Any]:
    """A finished grid: every run's outcome, the summary tables, no MLflow run RUNNING."""
    import pandas as pd

    runs = sorted(
        p.parent for g in ("cells/*/*/", "pretrain/*/") for p in out.glob(g + "results.json")
    )
    cells = pd.read_csv(out / "summary" / "cells.csv").drop(columns=["wall_s"])
    return {
        "runs": {str(p.relative_to(out)): run_outcome(p) for p in runs},
        "cells": cells.to_dict("records"),
        "alignment": pd.read_csv(out / "summary" / "alignment.csv").to_dict("records"),
        "running": mlflow_states(out).get("RUNNING", 0),
    }


def mlflow_states(out: Path) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    states: dict[str, int] = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            states[r.info.status] = states.get(r.info.status, 0) + 1
    return states


def tune_outcome(out: Path) -> dict[str, Any]:
    """The study: each enqueued learning rate completed once, with its value."""
    import optuna

    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{out / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    values = sorted((t.params["finetune.optim.lr"], t.value) for t in done)
    return {"values": values, "complete": len(done)}


def clear(folder: Path) -> None:
    """Everything of a finished comparison but its log: checkpoints, models and stores of
    hundreds of runs would fill a disk."""
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.suffix not in (".txt", ".log"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two outcomes differ, as dotted paths (the first few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{where}{k}.")][:5]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{where}{i}.")][:5]
    both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
    return [] if a == b or both_nan else [where.rstrip(".") or "value"]


def outcome_in_child(kind: Kind, folder: Path) -> dict[str, Any]:
    """``kind.outcome(folder)`` read in a child: this process never opens a database (a
    store cached here would be inherited, stale, by every later child)."""
    import pickle

    box = folder / "outcome.pickle"

    def read() -> None:
        box.write_bytes(pickle.dumps(kind.outcome(folder)))

    assert wait(spawn(folder / "outcome.log", done(read))) == 0, (
        folder / "outcome.log"
    ).read_text()
    return pickle.loads(box.read_bytes())


# ---------------------------------------------------------------------------- the four kinds


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


class Kind:
    """How to run one kind of work in a folder, run it again, and read its outcome."""

    name = ""

    def first(self, folder: Path) -> list[str]:
        raise NotImplementedError

    def again(self, folder: Path) -> list[str]:
        return self.first(folder)

    def prepare(self, folder: Path) -> None:
        """Before the first run (in a child: no database connection in this process)."""

    def outcome(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError


class Single(Kind):
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name, self.config = name, config

    def first(self, folder: Path) -> list[str]:
        cfg = write_yaml(folder / "run.yaml", self.config)
        return [self.name, str(cfg), "--output-dir", str(folder / "run"), "--no-tracking"]

    def again(self, folder: Path) -> list[str]:
        return [*self.first(folder), "--resume"]

    def outcome(self, folder: Path) -> dict[str, Any]:
        return run_outcome(folder / "run")


class Grid(Kind):
    name = "grid"

    def first(self, folder: Path) -> list[str]:
        exp = write_yaml(folder / "exp.yaml", GRID)
        return ["run", str(exp), "--output-dir", str(folder / "out"), "--no-progress",
                "--no-report"]  # fmt: skip

    def outcome(self, folder: Path) -> dict[str, Any]:
        return grid_outcome(folder / "out")


class Tune(Kind):
    name = "tune"

    def first(self, folder: Path) -> list[str]:
        exp = write_yaml(folder / "exp.yaml", TUNE)
        return ["tune", str(exp), "--output-dir", str(folder / "out"), "--no-progress",
                "--n-trials", str(len(TRIAL_LRS))]  # fmt: skip

    def prepare(self, folder: Path) -> None:
        def enqueue() -> None:
            from vilalign.experiments.spec import load_experiment
            from vilalign.experiments.tune import load_study

            study = load_study(load_experiment(folder / "exp.yaml"), folder / "out")
            for lr in TRIAL_LRS:
                study.enqueue_trial({"finetune.optim.lr": lr})

        self.first(folder)
        assert wait(spawn(folder / "prepare.log", done(enqueue))) == 0

    def again(self, folder: Path) -> list[str]:
        """As many trials as are left: queued ones and those of the killed worker."""
        count = folder / "left"

        def left() -> None:
            import optuna

            from vilalign.experiments.spec import load_experiment
            from vilalign.experiments.tune import load_study

            study = load_study(load_experiment(folder / "exp.yaml"), folder / "out")
            states = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
            count.write_text(str(len(study.get_trials(states=states))))

        assert wait(spawn(folder / "prepare.log", done(left))) == 0
        argv = self.first(folder)
        return [*argv[:-1], count.read_text()]

    def outcome(self, folder: Path) -> dict[str, Any]:
        return tune_outcome(folder / "out")


KINDS = {k.name: k for k in (Single("pretrain", PRETRAIN), Single("finetune", FINETUNE),
                              Grid(), Tune())}  # fmt: skip


# ---------------------------------------------------------------------------- sweeps


def reference(kind: Kind, out: Path, name: str = "reference") -> tuple[dict[str, Any], float]:
    folder = out / kind.name / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    kind.prepare(folder)
    code, seconds = run(kind.first(folder), folder / "log.txt")
    assert code == 0, (folder / "log.txt").read_text()[-3000:]
    return outcome_in_child(kind, folder), seconds


def random_kills(kind: Kind, n: int, out: Path, rng: random.Random) -> dict[str, Any]:
    """``n`` runs killed at uniform random moments of an uninterrupted run's span, each run
    again to the end; how many end equal to the uninterrupted run."""
    expected, span = reference(kind, out)
    rows = []
    for i in range(n):
        folder = out / kind.name / f"kill{i:02d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        kind.prepare(folder)
        at = rng.uniform(0.03, 0.97) * span
        killed = run_killed(kind.first(folder), folder / "log.txt", at)
        code, _ = run(kind.again(folder), folder / "log.txt")
        diff = (
            differences(outcome_in_child(kind, folder), expected) if code == 0 else [f"exit {code}"]
        )
        rows.append({"at_s": round(at, 2), "killed": killed, "differs": diff})
        if not diff:
            clear(folder)
        print(f"  {kind.name} kill {i}: at {at:.1f}s killed={killed} differs={diff}", flush=True)
    same = sum(not r["differs"] for r in rows)
    clear(out / kind.name / "reference")
    return {"kind": kind.name, "span_s": round(span, 1), "kills": sum(r["killed"] for r in rows),
            "runs": n, "equal": same, "rows": rows}  # fmt: skip


def protocol_kills(out: Path) -> dict[str, Any]:
    """A fine-tuning run (checkpoints, best record, export of model/, results.json) killed
    just before each of its renames, deletions and metric writes, then resumed."""
    from tests.train.faults import kill_at

    kind = KINDS["finetune"]
    expected, _ = reference(kind, out)
    counter_file = out / "protocol-events"

    def count() -> None:
        counter = [0]
        with kill_at(None, counter):
            from vilalign.cli import main

            assert main(kind.first(out / "protocol-count")) == 0
        counter_file.write_text(str(counter[0]))

    shutil.rmtree(out / "protocol-count", ignore_errors=True)
    assert wait(spawn(out / "protocol-count.log", done(count))) == 0
    events = int(counter_file.read_text())
    failures = {}
    for k in range(1, events + 1):
        folder = out / "protocol" / f"k{k:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        killed = wait(spawn(folder / "log.txt", cli(kind.first(folder), _killer(k)))) == -9
        code, _ = run(kind.again(folder), folder / "log.txt")
        diff = (
            differences(outcome_in_child(kind, folder), expected) if code == 0 else [f"exit {code}"]
        )
        if diff or not killed:
            failures[k] = diff or ["not killed"]
        else:
            clear(folder)
        print(f"  event {k}/{events}: {diff or 'equal'}", flush=True)
    clear(out / kind.name / "reference")
    return {"events": events, "equal": events - len(failures), "failures": failures}


_ARMED: list[Any] = []  # a child's armed context: collected, it would disarm itself


def _killer(k: int) -> Callable[[], None]:
    def arm() -> None:
        from tests.train.faults import kill_at

        armed = kill_at(k, [0])
        armed.__enter__()  # stays armed for the child's life (kept referenced)
        _ARMED.append(armed)

    return arm


# ---------------------------------------------------------------------------- two writers


def together(argvs: list[list[str]], logs: list[Path]) -> list[int]:
    """Start the commands at the same moment (each child waits for a common instant)."""
    start = time.time() + 0.5

    def at_start() -> None:
        time.sleep(max(0.0, start - time.time()))

    pids = [spawn(log, cli(argv, at_start)) for argv, log in zip(argvs, logs, strict=True)]
    return [wait(pid) for pid in pids]


def two_writers(kind: str, out: Path) -> dict[str, Any]:
    """Two processes on one folder: one refused in one line, the folder as one run left."""
    folder = out / "concurrent" / kind
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if kind == "analysis":
        argv = [
            "analyse",
            "--preset",
            "tiny",
            "--n-samples",
            "24",
            "--measures",
            "cka_linear",
            "--views",
            "cls",
            "--output-dir",
            str(folder / "out"),
            "--no-progress",
        ]

        def read() -> str:
            return (folder / "out" / "alignment.csv").read_text()

        expected = _analysis_reference(argv, out)
    else:
        runner = KINDS[kind]
        runner.prepare(folder)
        argv = runner.first(folder)
        expected = reference(runner, out, "concurrent-reference")[0]
    logs = [folder / "a.log", folder / "b.log"]
    codes = together([argv, argv], logs)
    messages = [log.read_text().strip().splitlines()[-1:] for log in logs]
    refused = [m[0] for c, m in zip(codes, messages, strict=True) if c == 2 and m]
    outcome = read() if kind == "analysis" else outcome_in_child(KINDS[kind], folder)
    clear(folder)
    if kind == "tune":  # two workers share a study: both finish, no trial twice
        return {"kind": kind, "codes": codes, "trials": outcome}
    return {"kind": kind, "codes": sorted(codes), "refusal": refused,
            "equal_to_one_run": not differences(outcome, expected)}  # fmt: skip


def _analysis_reference(argv: list[str], out: Path) -> str:
    folder = out / "concurrent" / "analysis-reference"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ref = [*argv[:-3], "--output-dir", str(folder / "out"), "--no-progress"]
    assert run(ref, folder / "log.txt")[0] == 0
    return (folder / "out" / "alignment.csv").read_text()


# ---------------------------------------------------------------------------- bad inputs


def bad_inputs(out: Path) -> str:
    """Every case of tests/bad_inputs.py in a child of its own; the markdown table."""
    from tests.bad_inputs import CASES, finished_run

    results_file = out / "bad-inputs.jsonl"
    results_file.unlink(missing_ok=True)
    shutil.rmtree(out / "bad", ignore_errors=True)

    def setup() -> None:
        finished_run(out / "bad" / "finished")

    assert wait(spawn(out / "bad.log", done(setup))) == 0
    for case in CASES:
        wait(spawn(out / "bad.log", done(_one_case(case, out, results_file))))
    from tests.bad_inputs import table

    rows = [json.loads(line) for line in results_file.read_text().splitlines()]
    by_name = {c.name: c for c in CASES}
    return table([(by_name[r["name"]], r["code"], r["message"], r["s"]) for r in rows])


def _one_case(case: Any, out: Path, results: Path) -> Callable[[], None]:
    def work() -> None:
        from tests.bad_inputs import run_case

        start = time.perf_counter()
        try:
            code, message = run_case(
                case, out / "bad" / case.name, out / "bad" / "finished" / "run"
            )
        except BaseException as err:  # (a traceback: the case is not handled)
            code, message = -1, f"{type(err).__name__}: {err}".splitlines()[0]
        row = {"name": case.name, "code": code, "message": message.splitlines()[-1] if message
               else "", "s": time.perf_counter() - start}  # fmt: skip
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    return work


# ---------------------------------------------------------------------------- main


def main() -> None:
    from vilalign.commands import HelpFormatter  # (torch-free: the options' defaults)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--random",
        type=int,
        default=0,
        metavar="N",
        help="random kills per kind",
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        default=list(KINDS),
        choices=list(KINDS),
        help="kinds of run --random kills",
    )
    p.add_argument("--protocol", action="store_true", help="kill at every protocol event")
    p.add_argument("--concurrent", action="store_true", help="two writers on each folder")
    p.add_argument("--bad-inputs", action="store_true", help="print the bad-input table")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/vilalign-faults"),
        help="folder for the runs and report.json",
    )
    args = p.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
                      TRANSFORMERS_OFFLINE="1")  # fmt: skip
    import torch

    for module in ("vilalign.cli", "vilalign.experiments.runner", "vilalign.experiments.tune"):
        importlib.import_module(module)  # once here: every child starts at once

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    rng = random.Random(args.seed)
    for name in args.kinds if args.random else []:
        report[f"random/{name}"] = random_kills(KINDS[name], args.random, args.out, rng)
        print(json.dumps({k: v for k, v in report[f"random/{name}"].items() if k != "rows"}))
    if args.protocol:
        report["protocol"] = protocol_kills(args.out)
        print(json.dumps(report["protocol"]))
    for kind in ("finetune", "grid", "analysis", "tune") if args.concurrent else ():
        report[f"concurrent/{kind}"] = two_writers(kind, args.out)
        print(json.dumps(report[f"concurrent/{kind}"], default=str))
    if args.bad_inputs:
        print(bad_inputs(args.out))
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()

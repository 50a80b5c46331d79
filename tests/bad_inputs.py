"""A catalogue of bad inputs and what the user sees: each is one line on stderr, exit 2.

Read by tests/test_bad_inputs.py (the cheap cases in the fast suite, all with ``-m slow``)
and by ``benchmarks/faults.py --bad-inputs``, which prints the table of docs/robustness.md.
Each case builds its inputs in a fresh folder, runs ``vilalign`` in-process and names the
words its message must contain.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SMALL_MODEL = (
    "model: {text: {num_layers: 1, max_length: 12}, image: {img_size: 32, depth: 1}, "
    "depth: 2, coattention_layers: [1]}\n"
)
RUN_FILE = (
    "preset: tiny\ntask: easyvqa\ndata: {name: easyvqa, limit: 48}\n"
    "splits: {val_fraction: 0.25}\n" + SMALL_MODEL +
    "train: {batch_size: 16, epochs: 1, max_steps: 2, progress: false}\n"
)  # fmt: skip
GRID = (
    "name: bad\npreset: tiny\n" + SMALL_MODEL +
    "finetune: {data: {name: easyvqa, limit: 48}, train: {epochs: 1, progress: false}}\n"
    "tracking: {enabled: false}\n"
)  # fmt: skip


@dataclass
class Case:
    """A bad input: ``argv(folder)`` builds it; ``expect`` must appear in the message."""

    name: str
    what: str  # the bad input, as the table shows it
    argv: Callable[[Path], list[str]]
    expect: str
    slow: bool = False  # builds or trains a model first
    around: Callable[[Path], contextlib.AbstractContextManager] | None = None
    needs: list[str] = field(default_factory=list)  # fixtures: "run" (a finished run folder)


def run_case(case: Case, folder: Path, finished_run: Path | None = None) -> tuple[int, str]:
    """(exit code, stderr) of the case's command, run in this process."""
    from vilalign.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    if "run" in case.needs:
        assert finished_run is not None
        shutil.copytree(finished_run, folder / "run", dirs_exist_ok=True)
    argv = case.argv(folder)
    err = io.StringIO()
    around = case.around(folder) if case.around else contextlib.nullcontext()
    with around, contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue().strip()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def grid(folder: Path, extra: str) -> list[str]:
    exp = write(folder / "exp.yaml", GRID + extra)
    return ["run", str(exp), "--output-dir", str(folder / "out"), "--no-progress"]


def finetune(folder: Path, *more: str, text: str = RUN_FILE) -> list[str]:
    cfg = write(folder / "ft.yaml", text)
    return ["finetune", str(cfg), "--output-dir", str(folder / "run"), "--no-tracking", *more]


def analyse(folder: Path, *more: str, checkpoint: Path | None = None) -> list[str]:
    source = ["--checkpoint", str(checkpoint)] if checkpoint else ["--preset", "tiny"]
    return ["analyse", *source, "--output-dir", str(folder / "out"), "--no-progress", *more]


HOLD = """
import sys, time
from vilalign.locks import folder_lock
with folder_lock(sys.argv[1], "run"):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """Another process holds ``folder`` for the duration."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", HOLD, str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` cannot be written into, also by root (an immutable folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[None]:
    """``folder/small`` is a 3 MB file system (a tmpfs): a checkpoint does not fit. Needs
    the right to mount (root); elsewhere the case is skipped."""
    small = folder / "small"
    small.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        import pytest

        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _truncated_weights(folder: Path) -> list[str]:
    weights = folder / "run" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return analyse(folder, checkpoint=folder / "run" / "model")


def _broken_config(folder: Path) -> list[str]:
    config = folder / "run" / "model" / "config.json"
    config.write_text(config.read_text()[:40])
    return analyse(folder, checkpoint=folder / "run" / "model")


CASES = [
    Case("unknown-field", "a misspelt field in a run file (`train: {epoks: 1}`)",
         lambda f: finetune(f, text="preset: tiny\ntrain: {epoks: 1}\n"),
         "train.epoks: unknown field"),
    Case("no-run-file", "a run file that does not exist",
         lambda f: ["finetune", str(f / "missing.yaml")], "config file not found"),
    Case("bad-yaml", "a run file that is not YAML (`train: {epochs: [1`)",
         lambda f: finetune(f, text="train: {epochs: [1\n"), "not valid yaml"),
    Case("bad-set", "`--set` without a value (`--set train.epochs`)",
         lambda f: finetune(f, "--set", "train.epochs"), "--set: expected KEY=VALUE"),
    Case("empty-baselines", "a grid with `baselines: []`",
         lambda f: grid(f, "grid: {baselines: []}\n"), "grid.baselines is empty"),
    Case("empty-pretraining", "a grid with `pretraining: []`",
         lambda f: grid(f, "grid: {pretraining: []}\n"), "grid.pretraining is empty"),
    Case("empty-datasets", "a grid with `datasets: []`",
         lambda f: grid(f, "grid: {datasets: []}\n"), "grid.datasets is empty"),
    Case("empty-seeds", "a grid with `seeds: []`",
         lambda f: grid(f, "grid: {seeds: []}\n"), "grid.seeds is empty"),
    Case("unknown-baseline", "a grid naming an unknown baseline (`vilbrt`)",
         lambda f: grid(f, "grid: {baselines: [vilbrt]}\n"), "unknown baseline(s) ['vilbrt']"),
    Case("grid-in-use", "a grid folder another process is running in",
         lambda f: grid(f, ""), "is in use by pid", around=lambda f: held(f / "out")),
    Case("run-in-use", "a run folder another process is training in",
         lambda f: finetune(f), "is in use by pid", around=lambda f: held(f / "run")),
    Case("run-read-only", "a read-only place for the run folder",
         lambda f: finetune(f, "--output-dir", str(f / "ro" / "run")),
         "cannot write into the run folder", around=lambda f: read_only(f / "ro")),
    Case("tracking-read-only", "an MLflow store in a read-only folder (`--tracking-uri`)",
         lambda f: [*finetune(f)[:-1], "--tracking-uri", f"sqlite:///{f}/ro/mlflow.db"],
         "MLflow tracking store", around=lambda f: read_only(f / "ro")),
    Case("tune-storage", "an Optuna storage in a read-only folder (`--storage`)",
         lambda f: ["tune", str(write(f / "t.yaml", GRID + "tune: {space: {finetune.optim.lr: "
                                      "{type: float, low: 0.0001, high: 0.001}}}\n")),
                    "--output-dir", str(f / "out"), "--storage", f"sqlite:///{f}/ro/o.db"],
         "cannot write into the Optuna storage folder", around=lambda f: read_only(f / "ro")),
    Case("no-tune-section", "`vilalign tune` on an experiment without a `tune` section",
         lambda f: ["tune", str(write(f / "t.yaml", GRID)), "--output-dir", str(f / "out")],
         "no 'tune' section"),
    Case("unknown-measure", "a misspelt measure (`--measures ckaa`)",
         lambda f: analyse(f, "--measures", "ckaa"), "unknown measure 'ckaa'", slow=True),
    Case("too-many-samples", "`--n-samples` above the split's size (100000)",
         lambda f: analyse(f, "--n-samples", "100000", "--measures", "cka_linear"),
         "is more than the 9673 samples", slow=True),
    Case("one-image", "`--n-samples 8` where all 8 samples show one image (easy-VQA test)",
         lambda f: analyse(f, "--n-samples", "8", "--measures", "cka_linear"),
         "all show one image", slow=True),
    Case("analyse-read-only", "a read-only `--output-dir` for `analyse`",
         lambda f: analyse(f, "--output-dir", str(f / "ro" / "a")),
         "cannot write into the analysis folder", around=lambda f: read_only(f / "ro")),
    Case("no-checkpoint", "`--checkpoint` a folder that is not a checkpoint",
         lambda f: analyse(f, checkpoint=f), "not a vilalign checkpoint"),
    Case("no-cuda", "`--device cuda` on a machine without one",
         lambda f: analyse(f, "--device", "cuda"), "no CUDA device here"),
    Case("occupied", "`finetune` into a finished run folder without `--resume`",
         lambda f: finetune(f), "already holds a run", slow=True, needs=["run"]),
    Case("resume-changed-model", "`--resume --set model.depth=3` (cannot change mid-run)",
         lambda f: finetune(f, "--resume", "--set", "model.depth=3"),
         "cannot change in the middle of a run: model.depth: 2 -> 3", slow=True,
         needs=["run"]),
    Case("diverging", "a learning rate that makes the loss diverge (`optim.lr=1e6`)",
         lambda f: finetune(f, "--set", "optim.lr=1e6", "--set", "train.max_steps=6",
                            "--set", "optim.warmup_ratio=0"),
         "Nothing of that step was applied or saved", slow=True),
    Case("disk-full", "a full disk while a checkpoint is written",
         lambda f: finetune(f, "--output-dir", str(f / "small" / "run")),
         "no space left on the device", slow=True, around=full_disk),
    Case("truncated-weights", "a checkpoint whose `model.safetensors` is cut short",
         _truncated_weights, "model.safetensors", slow=True, needs=["run"]),
    Case("broken-config", "a checkpoint whose `config.json` is cut short",
         _broken_config, "config.json", slow=True, needs=["run"]),
]  # fmt: skip


def finished_run(folder: Path) -> Path:
    """A finished tiny fine-tuning run (what the cases marked ``needs=["run"]`` copy)."""
    code, err = run_case(Case("setup", "", lambda f: finetune(f), ""), folder)
    assert code == 0, err
    return folder / "run"


def table(results: list[tuple[Case, int, str, float]]) -> str:
    """The markdown table of docs/robustness.md."""
    lines = [
        "| bad input | exit | what the user sees (one line) | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for case, code, message, seconds in results:
        shown = message.replace("|", "\\|")
        lines.append(f"| {case.what} | {code} | `{shown}` | {seconds:.1f} |")
    return "\n".join(lines)

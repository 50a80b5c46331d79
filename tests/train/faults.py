"""Fault injection for the training protocol: a toy run, killed (SIGKILL, in a forked child)
at the k-th rename, deletion or metrics write, then resumed.

Shared by the fast tests (tests/train/test_faults.py) and the sweep over every kill point
(``-m slow``). A forked child starts in milliseconds (the parent has imported torch
already), and SIGKILL runs no ``finally`` or ``except``: what is on disk afterwards is
exactly what a killed process leaves.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vilalign.data.types import Batch
from vilalign.io import write_json_atomic
from vilalign.train import checkpoint as ckpt
from vilalign.train import tracker as tracker_module
from vilalign.train.config import OptimConfig, TrainConfig
from vilalign.train.loop import Trainer, seed_everything
from vilalign.train.tasks import StepResult, Task

TIMING = ("samples_per_s", "data_wait_share")


class ToyTask(Task):
    """A linear classifier on 3x4x4 pixels with dropout (so RNG state matters on resume)."""

    monitor, monitor_mode = "accuracy", "max"

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(48, 4)))

    def forward(self, batch: Batch) -> StepResult:
        logits = self.model(batch.pixel_values)
        loss = F.cross_entropy(logits, batch.labels)
        return StepResult(loss, {"loss": loss.detach()}, {"logits": logits, "y": batch.labels})

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": (outputs["logits"].argmax(1) == outputs["y"]).float().mean().item()}


class ToyData(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(4, (n,), generator=gen)
        self.x = torch.randn(n, 3, 4, 4, generator=gen) + self.y.view(-1, 1, 1, 1) * 0.5

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
    x = torch.stack([i[0] for i in items])
    ids = torch.zeros(len(items), 2, dtype=torch.long)
    return Batch(ids, ids + 1, ids, x, torch.stack([i[1] for i in items]), [""] * len(items))


def alignment_like(ctx: Any) -> dict[str, float]:
    """An epoch callback that writes a file and reports a metric, as the alignment does."""
    value = float(ctx.trainer.task.model[2].weight.detach().abs().mean())
    write_json_atomic(ctx.run_dir / f"callback_epoch{ctx.epoch}.json", {"value": value})
    return {"align/toy": value}


def toy_trainer(run_dir: Path, lr: float = 0.05, **train: Any) -> Trainer:
    """16 samples, batches of 2: 8 steps an epoch, 2 epochs, a checkpoint every 4 steps (so
    step checkpoints fall on epoch ends and on the last step, where earlier versions failed)."""
    seed_everything(0)
    cfg = TrainConfig(
        **{
            "batch_size": 2, "epochs": 2, "progress": False, "seed": 0,
            "monitor": "val/accuracy", "monitor_mode": "max", "log_every_n_steps": 2,
            "checkpoint": {"every_n_steps": 4}, **train,
        }
    )  # fmt: skip
    return Trainer(
        ToyTask(), cfg, OptimConfig(lr=lr), run_dir, ToyData(16, 0), ToyData(6, 1), collate,
        callbacks=[alignment_like],
    )  # fmt: skip


class Killed(Exception):
    pass


@contextmanager
def kill_at(k: int | None, counter: list[int]) -> Iterator[None]:
    """Count protocol events (each rename, each folder deletion, each metrics-file write);
    SIGKILL this process just before event ``k`` (None: count only)."""
    patched = {os: ("replace",), shutil: ("rmtree",), tracker_module.csv: ("writer",)}
    originals = {(m, n): getattr(m, n) for m, names in patched.items() for n in names}

    def wrap(fn: Callable) -> Callable:
        def event(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            if counter[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return event

    for (module, name), fn in originals.items():
        setattr(module, name, wrap(fn))
    try:
        yield
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    assert csv.writer is originals[(tracker_module.csv, "writer")]


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; its exit status (-9: killed by SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            work()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def count_events(run_dir: Path, run: Callable[[Path], None]) -> int:
    """Protocol events of an uninterrupted run (counted in a child, reported by a file)."""
    report = run_dir.parent / f"{run_dir.name}.events"

    def work() -> None:
        counter = [0]
        with kill_at(None, counter):
            run(run_dir)
        report.write_text(str(counter[0]))

    assert in_child(work) == 0
    return int(report.read_text())


def killed_at(run_dir: Path, k: int, run: Callable[[Path], None]) -> int:
    """Run in a child killed just before event ``k``; its status (-9 when the kill came)."""

    def work() -> None:
        with kill_at(k, [0]):
            run(run_dir)

    return in_child(work)


def outcome(run_dir: Path, trainer: Trainer) -> dict[str, Any]:
    """What a finished toy run leaves, timings aside: weights, history, metric records,
    checkpoint pointers, callback files."""
    records = tracker_module.FileTracker(run_dir).records()
    files = sorted(run_dir.glob("callback_epoch*.json"))
    return {
        "weights": {k: v.clone() for k, v in trainer.task.state_dict().items()},
        "history": [_untimed(h) for h in trainer.history],
        "records": [_untimed(r) for r in records],
        "latest": _pointer(ckpt.read_pointer(run_dir / "checkpoints")),
        "best": ckpt.read_pointer(run_dir / "checkpoints", ckpt.BEST),
        "best.json": _json(run_dir / "checkpoints" / "best.json"),
        "callbacks": {f.name: json.loads(f.read_text()) for f in files},
        "csv_rows": len((run_dir / "metrics.csv").read_text().splitlines()),
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _pointer(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if pointer is None else {k: v for k, v in pointer.items() if k != "previous"}


def _untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.endswith(TIMING)}


def same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields in which two outcomes differ (weights compared bit for bit)."""
    wa, wb = a["weights"], b["weights"]
    bad = [] if wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa) else ["w"]
    return bad + [k for k in a if k != "weights" and a[k] != b[k]]

"""Where a run's figures go: a small ``Tracker`` interface and a file-based implementation.

``FileTracker`` writes ``metrics.jsonl`` (one record per log call), ``metrics.csv`` (tidy:
step, epoch, name, value) and ``params.json`` into the run folder. The run store (MLflow,
see DESIGN.md) plugs in later as another ``Tracker``; the loop only calls this interface.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from vilalign.io import write_atomic, write_failure, write_text_atomic

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PARAMS_JSON = "params.json"
PLOT_PNG = "metrics.png"


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None: ...

    def mark(self) -> int | None:
        """A position in what was recorded, saved with each checkpoint (None: none kept)."""

    def rewind(self, step: int, mark: int | None = None) -> None:
        """Forget what was recorded after ``mark`` (else after ``step``): a resumed run
        repeats it."""

    def close(self) -> None: ...


class NullTracker:
    """Records nothing: what every rank but rank 0 of a DDP run logs to."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        pass

    def mark(self) -> int | None:
        return None

    def rewind(self, step: int, mark: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class FileTracker:
    """Append-only metrics files in the run folder, plus a PNG plot on :meth:`plot`.

    Each checkpoint saves :meth:`mark` (the records written so far); a resumed run
    rewinds to it, so a record written after the checkpoint by a killed attempt (a step's
    figures, an epoch's validation, the test metrics) is never kept twice. A line cut
    short by a kill is dropped when the files are read.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / METRICS_JSONL
        self.csv = self.run_dir / METRICS_CSV
        self._count: int | None = None  # records in the file, counted on first need

    def log_params(self, params: Mapping[str, Any]) -> None:
        text = json.dumps(dict(params), indent=2, default=str)
        write_text_atomic(self.run_dir / PARAMS_JSON, text)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        count = self.mark()
        record = {"step": step, "epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
        with _naming(self.jsonl), self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._count = count + 1
        new = not self.csv.exists()
        with _naming(self.csv), self.csv.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "name", "value"])
            writer.writerows([step, epoch, k, float(v)] for k, v in metrics.items())

    def records(self) -> list[dict[str, float]]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a killed attempt, cut short
                continue
        return out

    def mark(self) -> int:
        if self._count is None:
            self._count = len(self.records())
        return self._count

    def rewind(self, step: int, mark: int | None = None) -> None:
        records = self.records()
        kept = records[:mark] if mark is not None else [r for r in records if r["step"] <= step]
        write_text_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        rows = [["step", "epoch", "name", "value"]]
        for r in kept:
            rest = {k: v for k, v in r.items() if k not in ("step", "epoch")}
            rows += [[r["step"], r["epoch"], k, v] for k, v in rest.items()]
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        write_text_atomic(self.csv, buffer.getvalue())
        self._count = len(kept)

    def plot(self) -> Path | None:
        return plot_metrics(self.records(), self.run_dir / PLOT_PNG)

    def close(self) -> None:
        self.plot()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A refused append (a full disk) reported with the file's name."""
    try:
        yield
    except OSError as err:
        failure = write_failure(err, path)
        if failure is None:
            raise
        raise failure from err


#: metrics.png's panels, in display order, and which series each shows.
PANELS = ("losses", "task metrics", "throughput")


def _panel(name: str) -> str | None:
    if "loss" in name:
        return "losses"
    if name.endswith(("samples_per_s", "data_wait_share")):
        return "throughput"
    return None if name.startswith("align/") else "task metrics"


def plot_metrics(records: list[dict[str, float]], path: Path) -> Path | None:
    """Losses, task metrics and throughput, one panel each, against optimiser step;
    None if nothing to plot. (Alignment series have their own figures in the report.)"""
    series = _series(records)
    panels = [(t, {k: v for k, v in series.items() if _panel(k) == t}) for t in PANELS]
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        return None
    from matplotlib.figure import Figure  # files only, never a window (no pyplot)

    fig = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels, strict=True):
        handles = []
        for name, (xs, ys) in sorted(lines.items()):
            # a share (0..1) beside samples/s gets its own axis on the right
            target = ax.twinx() if name.endswith("_share") and len(lines) > 1 else ax
            colour = f"C{len(handles) % 10}"
            marker = "o" if len(xs) < 30 else None
            handles += target.plot(xs, ys, marker=marker, markersize=3, label=name, color=colour)
            if target is not ax:
                target.set_ylabel(name, fontsize=8)
        ax.set_xlabel("optimiser step")
        ax.set_title(title)
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15),
                  ncol=2 if len(lines) > 4 else 1, frameon=False)  # fmt: skip
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _series(records: list[dict[str, float]]) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    has_steps = any("train/lr" in r for r in records)
    for r in records:
        # The loop logs train/* twice: interval means every few steps (with train/lr) and
        # whole-epoch means at the epoch's end; plotting both on one line makes sawteeth.
        epoch_summary = "train/lr" not in r
        for k, v in r.items():
            if k in ("step", "epoch") or not math.isfinite(v) or k.endswith(("lr", "/time_s")):
                continue
            throughput = k.endswith(("samples_per_s", "data_wait_share"))  # epoch ends only
            if epoch_summary and has_steps and k.startswith("train/") and not throughput:
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(int(r["step"]))
            ys.append(v)
    return series

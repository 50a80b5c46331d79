"""One training loop for every task: pretraining objectives and fine-tuning heads alike.

The loop knows a :class:`~vilalign.train.tasks.Task` (``task(batch) -> StepResult``,
``task.metrics(outputs)``) and nothing of the model. It does gradient accumulation to a
target batch size, gradient clipping, bf16 autocast on CUDA, optional ``torch.compile``,
evaluation every epoch, early stopping, a checkpoint every epoch (and every N steps), and
exact resume: weights, optimizer, scheduler, scaler, RNG states and the data position are
restored, so a resumed CPU run ends bit-identical to an uninterrupted one — from a kill
at any moment, also inside the end of an epoch (validation, callbacks, the best-checkpoint
record): the end of an epoch that a checkpoint's steps lead to but its history lacks is
run on resume. Changed optimiser settings (learning rate, schedule, clipping, epochs) are
applied from the resumed step on.

A non-finite loss or gradient is never applied: ``train.on_nonfinite`` either stops the
run (the default), rolling the checkpoint pointer back past any update that led to it,
or skips the update and counts it.

Under ``torchrun`` the same loop runs DDP (see :mod:`vilalign.distributed`): each rank
takes its share of every global batch, gradients are averaged once per optimiser step
(``no_sync`` on the other micro-batches), metrics are reduced over ranks, and only rank 0
logs and writes. The data position is counted in samples of the global order, so a run
resumes with the same or another number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from vilalign import distributed as dist
from vilalign.config import ConfigError
from vilalign.data.types import Batch
from vilalign.train import checkpoint as ckpt
from vilalign.train import fastpath
from vilalign.train.config import OptimConfig, TrainConfig, monitor_mode_of
from vilalign.train.distributed import all_reduce_sums
from vilalign.train.optim import build_optimizer, build_scheduler, param_groups
from vilalign.train.tasks import StepResult, Task
from vilalign.train.tracker import FileTracker, NullTracker, Tracker

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite; nothing of that step was applied or
    saved, and the last checkpoint holds weights that gave finite losses."""


#: With ``on_nonfinite: skip``, this many skipped steps in a row stop the run: the weights
#: themselves have diverged, and skipping would only spend the rest of the schedule.
MAX_CONSECUTIVE_SKIPS = 10


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): model init and dropout become repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA for 'auto' (no loss scaling needed); None means full precision."""
    if amp == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, analysis) without disturbing the training RNG streams.

    Without this, whatever a callback draws would shift dropout after it, and a resumed
    run (which skips the callback) would no longer match an uninterrupted one.
    """
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(state)


class EpochSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch) that can start part-way: the data position on resume."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.start, self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen)[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


class Meter:
    """Sample-weighted running means of named scalars."""

    def __init__(self, state: Mapping[str, list[float]] | None = None) -> None:
        self.sums: dict[str, list[float]] = {k: list(v) for k, v in (state or {}).items()}

    def update(self, values: Mapping[str, torch.Tensor | float], n: int) -> None:
        for k, v in values.items():
            total = self.sums.setdefault(k, [0.0, 0.0])
            total[0] += float(v) * n
            total[1] += n

    def means(self) -> dict[str, float]:
        return {k: s / c for k, (s, c) in self.sums.items() if c}

    def state(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.sums.items()}


@dataclass
class Progress:
    """Where the loop is; saved in every checkpoint."""

    epoch: int = 0  # the epoch under way (0-based)
    batch_in_epoch: int = 0  # micro-batches of it already consumed (by each rank)
    samples_in_epoch: int = 0  # samples of the epoch's global order consumed (all ranks)
    step: int = 0  # optimiser steps done
    best_value: float | None = None
    best_step: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0  # updates not applied: non-finite loss or gradient (on_nonfinite: skip)


@dataclass
class EpochContext:
    """What an epoch callback sees (the alignment analysis runs here)."""

    trainer: Trainer
    epoch: int  # 1-based: the epoch just finished (or cut short by max_steps); 0: before step 1
    step: int
    metrics: dict[str, float]

    @property
    def task(self) -> Task:
        return self.trainer.task

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir


EpochCallback = Callable[[EpochContext], Mapping[str, float] | None]
StepCallback = Callable[["Trainer"], None]


@dataclass
class FitResult:
    history: list[dict[str, float]]
    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_value: float | None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Fit a task on a dataset; see the module doc for what one run does."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        optim: OptimConfig,
        run_dir: str | Path,
        train_data: Dataset,
        val_data: Dataset | None = None,
        collate_fn: Callable[[list], Batch] | None = None,
        tracker: Tracker | None = None,
        callbacks: Sequence[EpochCallback] = (),
        step_callbacks: Sequence[StepCallback] = (),
    ) -> None:
        self.cfg, self.optim_cfg = cfg, optim
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = dist.init_distributed(cfg.device, cfg.distributed.timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self._check_world()
        self.task = task.to(self.device)
        fastpath.apply_fast_paths(self.task.model, cfg.fast, self.device, cfg.compile)
        self._ddp = self._wrap_ddp()
        self.train_data, self.val_data, self.collate_fn = train_data, val_data, collate_fn
        self.tracker = (tracker or FileTracker(self.run_dir)) if self.is_main else NullTracker()
        self.callbacks, self.step_callbacks = list(callbacks), list(step_callbacks)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        self.optimizer = build_optimizer(self.task, optim, fused=cfg.fast.fused_adamw)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, optim)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.monitor, self.monitor_mode = _monitor(cfg, task, val_data is not None)
        self.progress = Progress()
        self.epoch_meter, self.log_meter = Meter(), Meter()
        self._epoch_complete = True  # set by train_epoch: False when max_steps cut it short
        self.history: list[dict[str, float]] = []
        # The last step whose weights gave a finite loss (a checkpoint of a later step is
        # unconfirmed: the non-finite stop rolls back past it), and skips in a row.
        self._finite_at, self._skips_in_a_row = -1, 0
        self._clock = {"start": time.perf_counter(), "wait": 0.0, "samples": 0}

    def _check_world(self) -> None:
        per_step = self.cfg.batch_size * self.world_size
        target = self.cfg.target_batch_size
        if target is not None and target % per_step:
            raise ValueError(
                f"target_batch_size: {target} is not a multiple of batch_size x ranks = "
                f"{self.cfg.batch_size} x {self.world_size}"
            )
        if self.world_size > 1:
            # Different dropout on every rank (the weights are broadcast from rank 0 anyway).
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.rank)

    def _wrap_ddp(self) -> DistributedDataParallel | None:
        """DDP around the task when there are several ranks (it broadcasts rank 0's weights)."""
        if self.world_size == 1:
            return None
        return DistributedDataParallel(
            self.task,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=self.cfg.distributed.find_unused_parameters,
        )

    @property
    def step_module(self) -> torch.nn.Module:
        """What runs a training step: DDP around the task, or the task itself."""
        return self._ddp if self._ddp is not None else self.task

    # ------------------------------------------------------------------ sizes

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimiser step on each rank: the global target / (batch x ranks)."""
        per_step = self.cfg.batch_size * self.world_size
        return (self.cfg.target_batch_size or per_step) // per_step

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches each rank takes per epoch (its share is padded to equal length)."""
        if isinstance(self.train_data, IterableDataset):
            return math.ceil(_stream_length(self.train_data) / self.cfg.batch_size)
        return math.ceil(math.ceil(len(self.train_data) / self.world_size) / self.cfg.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation_steps)

    @property
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    # ------------------------------------------------------------------ fit

    def fit(self, resume: bool = False) -> FitResult:
        """Train to the end (epochs, max_steps or early stop); ``resume`` continues the run."""
        if resume:
            self.resume()
        elif self.tracker.mark():  # records of an attempt that never reached a checkpoint
            self.tracker.rewind(0, 0)
        if self.progress.step == 0:  # epoch 0: the model before its first optimiser step
            self._run_start_callbacks()
        while not self._finished():
            self.train_epoch()
            self._end_epoch()
        self.tracker.close()
        best = ckpt.resolve(self.ckpt_dir, ckpt.BEST) if self.cfg.checkpoint.keep_best else None
        return FitResult(
            history=list(self.history),
            run_dir=self.run_dir,
            last_checkpoint=ckpt.resolve(self.ckpt_dir),
            best_checkpoint=best,
            best_value=self.progress.best_value,
            stopped_early=self.progress.stopped_early,
        )

    def _finished(self) -> bool:
        p = self.progress
        if self._end_pending():
            return False
        return p.stopped_early or p.epoch >= self.cfg.epochs or p.step >= self.total_steps

    def _end_pending(self) -> bool:
        """Steps were taken since the last epoch's end ran (its history row has the step):
        a run killed inside the end of its last epoch, resumed from a checkpoint of that
        epoch's last step, still has that end to run."""
        p = self.progress
        last = self.history[-1]["step"] if self.history else 0
        return p.step > last

    def _at_epoch_end(self) -> bool:
        p = self.progress
        return p.step >= self.total_steps or p.batch_in_epoch >= self.micro_batches_per_epoch

    # ------------------------------------------------------------------ data

    def loader(
        self,
        dataset: Dataset,
        shuffle: bool,
        epoch: int = 0,
        start: int = 0,
        batch_size: int | None = None,
        collate_fn: Callable[[list], Batch] | None = None,
    ) -> DataLoader:
        """A loader whose order and worker seeds depend only on (seed, epoch, start).

        Its own generator keeps the loader from drawing on the global torch RNG (which
        would shift dropout between an uninterrupted and a resumed run). ``batch_size``
        and ``collate_fn`` default to the trainer's.
        """
        self.set_collate_epoch(epoch)
        if isinstance(dataset, IterableDataset):
            return self._stream_loader(dataset, epoch)
        sampler: Sampler[int] = EpochSampler(len(dataset), self.cfg.seed, shuffle)
        sampler.set_position(epoch, start)
        if dist.is_distributed():  # (not inside an epoch callback: rank 0 runs those alone)
            sampler = dist.RankShard(sampler, dist.get_rank(), dist.get_world_size())
        return DataLoader(
            dataset,
            batch_size=batch_size or self.cfg.batch_size,
            sampler=sampler,
            collate_fn=collate_fn or self.collate_fn,
            num_workers=self.cfg.num_workers,
            pin_memory=fastpath.pin_memory(self.cfg.fast, self.device),
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch),
        )

    def set_collate_epoch(self, epoch: int) -> None:
        """Tell a collator that draws (masking, negatives) which epoch it serves."""
        set_epoch = getattr(self.collate_fn, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def _stream_loader(self, dataset: IterableDataset, epoch: int) -> DataLoader:
        """A streamed dataset (WebDataset shards) splits itself over ranks and workers."""
        set_epoch = getattr(dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)  # before the workers start: they copy the dataset
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate_fn,
            num_workers=self.cfg.num_workers,
            pin_memory=fastpath.pin_memory(self.cfg.fast, self.device),
            # its own generator: starting the iterator must not draw on the global RNG
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch),
        )

    # ------------------------------------------------------------------ training

    def train_epoch(self) -> dict[str, float]:
        """Train until the epoch's data (or max_steps) runs out; returns its timing.

        ``samples_per_s`` and ``data_wait_share`` (time blocked on the loader / wall time)
        count this call only, so a resumed epoch reports its own pace.
        """
        p, accum = self.progress, self.accumulation_steps
        batches = self.train_batches()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=p.batch_in_epoch // accum,
            desc=f"epoch {p.epoch + 1}/{self.cfg.epochs}",
            disable=not (self.cfg.progress and self.is_main),
            leave=False,
        )
        self.task.train()
        self._clock = {"start": time.perf_counter(), "wait": 0.0, "samples": 0}
        exhausted = False
        while p.step < self.total_steps:
            tick = time.perf_counter()
            group = list(islice(batches, accum))
            self._clock["wait"] += time.perf_counter() - tick
            if not group:
                exhausted = True
                break
            self._optimizer_step(group)
            bar.update(1)
            bar.set_postfix(
                loss=f"{self.log_meter.means().get('loss', float('nan')):.4f}",
                samples_s=f"{self._timing()['samples_per_s']:.1f}",
            )
            self._after_step()
        bar.close()
        # max_steps can stop a run inside an epoch: that epoch is not over, and a resumed
        # run (with a larger max_steps) must go on from this position, not start the next.
        self._epoch_complete = exhausted or p.batch_in_epoch >= self.micro_batches_per_epoch
        return self._timing()

    def train_batches(self) -> Iterator[Batch]:
        """This rank's micro-batches for the rest of the epoch, from the saved position."""
        p = self.progress
        if p.batch_in_epoch and not p.samples_in_epoch:  # a checkpoint from before DDP
            p.samples_in_epoch = p.batch_in_epoch * self.cfg.batch_size
        batches = iter(self.loader(self.train_data, True, p.epoch, p.samples_in_epoch))
        if isinstance(self.train_data, IterableDataset):
            # A stream cannot start part-way: re-read the epoch's consumed micro-batches
            # (the same ones with the same seed, ranks and workers).
            batches = islice(batches, p.batch_in_epoch, None)
        return batches

    def _timing(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._clock["start"]
        return {
            "samples_per_s": self._clock["samples"] / elapsed if elapsed > 0 else 0.0,
            "data_wait_share": self._clock["wait"] / elapsed if elapsed > 0 else 0.0,
        }

    def _optimizer_step(self, group: list[Batch]) -> None:
        """Accumulate gradients over ``group`` (weighted by size: = one big batch), then
        step; a non-finite loss or gradient stops the run or skips the update
        (``train.on_nonfinite``), never reaching the weights."""
        total = sum(len(b) for b in group)
        logs = self._accumulate(group, total)
        norm = self._gradient_norm()
        if logs is not None and self._gradient_finite(norm, group[-1]):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for meter in (self.epoch_meter, self.log_meter):
                for values, n in logs:
                    meter.update(values, n)
            self._finite_at, self._skips_in_a_row = self.progress.step, 0
        else:
            self._skip(group[-1])
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.batch_in_epoch += len(group)
        self.progress.samples_in_epoch += total * self.world_size
        self.progress.step += 1
        self._clock["samples"] += total

    def _accumulate(
        self, group: list[Batch], total: int
    ) -> list[tuple[dict[str, torch.Tensor], int]] | None:
        """Forward and backward every micro-batch; their logs, or None when a loss was not
        finite (skip mode: the backward still runs, so DDP's ranks stay in step)."""
        logs: list[tuple[dict[str, torch.Tensor], int]] | None = []
        for i, batch in enumerate(group):
            batch = fastpath.to_device(batch, self.device, self.cfg.fast)
            # DDP: average gradients over ranks once, after the last micro-batch.
            with self._no_sync(last=i == len(group) - 1):
                with self._autocast():
                    result = self.step_module(batch)
                if not self._loss_finite(result):
                    if self.cfg.on_nonfinite == "stop":
                        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in result.logs.items())
                        self._stop_nonfinite(f"loss became {result.loss.item()} ({terms})", batch)
                    logs = None
                self.scaler.scale(result.loss * (len(batch) / total)).backward()
            if logs is not None:
                logs.append((result.logs, len(batch)))
        return logs

    def _gradient_norm(self) -> torch.Tensor | None:
        """The global gradient norm (clipped to ``grad_clip`` if set); None under fp16 loss
        scaling, whose own overflow check skips such steps (that is its normal working)."""
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        if self.optim_cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            return torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
        if self.scaler.is_enabled():
            return None
        grads = [q.grad for q in params if q.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else None

    def _gradient_finite(self, norm: torch.Tensor | None, batch: Batch) -> bool:
        if norm is None or self.scaler.is_enabled() or torch.isfinite(norm).item():
            return True
        if self.cfg.on_nonfinite == "stop":
            self._stop_nonfinite(f"gradient norm became {norm.item()}", batch)
        return False

    def _skip(self, batch: Batch) -> None:
        """Leave the weights as they were, count it; too many in a row stop the run."""
        p = self.progress
        p.skipped_steps += 1
        self._skips_in_a_row += 1
        logger.warning(
            "step %d: non-finite loss or gradient, update skipped (%d skipped so far)",
            p.step + 1,
            p.skipped_steps,
        )
        if self._skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            self._stop_nonfinite(
                f"{MAX_CONSECUTIVE_SKIPS} steps in a row had a non-finite loss or gradient", batch
            )

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if last or self._ddp is None:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss_finite(self, result: StepResult) -> bool:
        finite = torch.isfinite(result.loss.detach()).float()
        if self.world_size > 1:
            # Every rank decides together: one rank raising or skipping alone would leave
            # the others waiting in the next collective until the timeout.
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _stop_nonfinite(self, what: str, batch: Batch | None) -> None:
        """Raise the one-line stop, after pointing ``latest.json`` past any checkpoint whose
        weights were never seen to give a finite loss (they hold the update that led here)."""
        p = self.progress
        pointer = ckpt.read_pointer(self.ckpt_dir)
        if pointer is not None and pointer["step"] > self._finite_at and self.is_main:
            pointer = ckpt.roll_back(self.ckpt_dir) or pointer
        last = (
            f"{self.ckpt_dir / pointer['name']} (step {pointer['step']})"
            if pointer
            else "none (none was written yet)"
        )
        lr = f"{self.optim_cfg.lr / 10:.3g}"
        ids = f"; first sample ids of the batch: {batch.ids[:4]}" if batch is not None else ""
        raise NonFiniteLossError(
            f"{what} at epoch {p.epoch + 1}, step {p.step + 1}{ids}. Nothing of that step "
            f"was applied or saved; the last checkpoint is {last}. Resume from it with a "
            f"lower learning rate (optim.lr, e.g. --resume --set optim.lr={lr}), or skip "
            "such steps (train.on_nonfinite: skip)"
        )

    def _after_step(self) -> None:
        p = self.progress
        if p.step % self.cfg.log_every_n_steps == 0:
            lr = self.scheduler.get_last_lr()[0]
            logs = {f"train/{k}": v for k, v in _reduced(self.log_meter).means().items()}
            if p.skipped_steps:
                logs["train/skipped_steps"] = p.skipped_steps
            self.tracker.log_metrics({**logs, "train/lr": lr}, p.step, p.epoch + 1)
            self.log_meter = Meter()
        every = self.cfg.checkpoint.every_n_steps
        # (not at an epoch's end: the end-of-epoch checkpoint follows at the same step)
        if every and p.step % every == 0 and not self._at_epoch_end():
            self.save()
        for callback in self.step_callbacks:
            callback(self)

    # ------------------------------------------------------------------ epoch end

    def _end_epoch(self) -> None:
        """Evaluate, run the callbacks, update best / early stopping, checkpoint, log.

        The callbacks (per-epoch alignment, pruning) run before the checkpoint: a run killed
        inside one resumes from the previous checkpoint and runs it again, so no epoch's
        analysis is lost, and their metrics (``align/...``) can be monitored.
        """
        p = self.progress
        summary = {f"train/{k}": v for k, v in _reduced(self.epoch_meter).means().items()}
        summary.update({f"train/{k}": v for k, v in self._timing().items()})
        if self.val_data is not None:
            summary.update(self.evaluate(self.val_data, "val"))
            self._check_validation(summary)
        complete = self._epoch_complete
        epoch = p.epoch + 1
        if complete:
            p.epoch, p.batch_in_epoch, p.samples_in_epoch = epoch, 0, 0
            self.epoch_meter = Meter()
        entry = {"epoch": epoch, "step": p.step, **({} if complete else {"partial": True})}
        self.history.append({**entry, **summary})
        self.tracker.log_metrics(summary, p.step, epoch)
        logger.info(
            "epoch %d/%d%s step %d | %s",
            epoch,
            self.cfg.epochs,
            "" if complete else " (stopped by max_steps inside it)",
            p.step,
            format_metrics(summary),
        )
        extra = self._run_callbacks(summary, epoch)
        improved = self._update_best({**summary, **extra})
        self.save(best=improved)
        plot = getattr(self.tracker, "plot", None)
        if callable(plot):
            plot()

    def _check_validation(self, summary: dict[str, float]) -> None:
        """The weights about to be saved must give finite validation losses; then they
        are confirmed (a later non-finite stop does not roll back past them)."""
        bad = {k: v for k, v in summary.items() if k.endswith("loss") and not math.isfinite(v)}
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            self._stop_nonfinite(f"validation loss became non-finite ({what})", None)
        self._finite_at = self.progress.step

    def _update_best(self, summary: dict[str, float]) -> bool:
        p, cfg = self.progress, self.cfg
        if self.monitor not in summary:
            raise ConfigError(
                f"train.monitor: metric {self.monitor!r} is not reported; "
                f"available: {', '.join(sorted(summary))}"
            )
        value = summary[self.monitor]
        delta = cfg.early_stopping.min_delta
        better = p.best_value is None or (
            value > p.best_value + delta
            if self.monitor_mode == "max"
            else value < p.best_value - delta
        )
        if better and math.isfinite(value):
            p.best_value, p.best_step, p.bad_epochs = value, p.step, 0
            return True
        p.bad_epochs += 1
        patience = cfg.early_stopping.patience
        if patience is not None and p.bad_epochs >= patience:
            p.stopped_early = True
            logger.info("early stopping: %s did not improve for %d epochs", self.monitor, patience)
        return False

    def _run_callbacks(self, summary: dict[str, float], epoch: int) -> dict[str, float]:
        """Run the epoch callbacks; returns the metrics they add (the same on every rank)."""
        # Rank 0 alone runs them (on the whole data it is given, with the unwrapped model);
        # the other ranks wait for it, so no rank runs ahead into the next epoch.
        added: dict[str, float] = {}
        if self.is_main:
            context = EpochContext(self, epoch, self.progress.step, summary)
            for callback in self.callbacks:
                with preserved_rng(), dist.local_only():
                    extra = callback(context)
                if extra:
                    self.tracker.log_metrics(extra, self.progress.step, epoch)
                    self.history[-1].update(extra)
                    added.update(extra)
        added = dist.broadcast_object(added)  # (also the barrier the other ranks wait at)
        if not self.is_main:
            self.history[-1].update(added)
        return added

    def _run_start_callbacks(self) -> None:
        """Callbacks with an ``on_fit_start(ctx)`` measure the untrained model (epoch 0)."""
        starts = [getattr(c, "on_fit_start", None) for c in self.callbacks]
        for start in (s for s in starts if callable(s) and self.is_main):
            with preserved_rng(), dist.local_only():
                extra = start(EpochContext(self, 0, 0, {}))
            if extra:
                self.tracker.log_metrics(dict(extra), 0, 0)
        dist.barrier()

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, split: str = "val") -> dict[str, float]:
        """Mean of the task's logged scalars and its split-level metrics, keys ``split/name``.

        Under DDP each rank evaluates its share; the per-sample outputs are gathered back
        into dataset order (padding dropped) and the scalars summed over ranks, so every
        rank returns the whole split's figures. (A padded sample, at most ranks - 1 of
        them, counts twice in the logged loss means, never in the metrics.)
        """
        with preserved_rng():
            metrics = self.evaluate_loader(
                self.loader(dataset, shuffle=False), len(dataset), self.task.metrics
            )
        return {f"{split}/{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate_loader(
        self,
        loader: DataLoader,
        size: int,
        metrics_fn: Callable[[dict[str, torch.Tensor]], dict[str, float]],
        task: Task | None = None,
    ) -> dict[str, float]:
        """One pass of ``task`` (default: the trainer's) in eval mode over ``loader`` (``size``
        samples in all ranks' order): logged means and ``metrics_fn`` of the gathered
        outputs, keys unprefixed."""
        task = task or self.task
        was_training = self.task.training  # (a sub-task's own flag may be stale)
        task.eval()
        meter, outputs = Meter(), defaultdict(list)
        for batch in loader:
            batch = fastpath.to_device(batch, self.device, self.cfg.fast)
            with self._autocast():
                result = task(batch)
            meter.update(result.logs, len(batch))
            for k, v in result.outputs.items():
                outputs[k].append(v.cpu())
        metrics = _reduced(meter).means()
        gathered = {k: dist.gather_in_order(torch.cat(v), size) for k, v in outputs.items()}
        metrics.update(metrics_fn(gathered))
        task.train(was_training)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """Everything but the weights that an exact resume needs."""
        rng = ckpt.rng_state()
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            # every rank's streams (dropout differs per rank), for a resume on as many ranks
            "rng_ranks": dist.all_gather_object(rng) if self.world_size > 1 else [],
            "progress": asdict(self.progress),
            "epoch_meter": self.epoch_meter.state(),
            "log_meter": self.log_meter.state(),
            "history": self.history,
            "tracker_mark": self.tracker.mark(),  # records to keep when resuming from here
        }

    def save(self, best: bool = False) -> None:
        """Rank 0 writes the checkpoint (``best``: it is the best so far, recorded in the
        same atomic step); every rank returns once it is complete."""
        state = self.state()  # on every rank: it gathers the ranks' RNG states
        if self.is_main:
            record = best and self.cfg.checkpoint.keep_best
            value = (self.monitor, float(self.progress.best_value)) if record else None
            ckpt.save_checkpoint(self.ckpt_dir, self.progress.step, self.task, state, value)
            ckpt.prune(self.ckpt_dir)
        dist.barrier()

    def resume(self) -> bool:
        """Load the latest checkpoint of this run, if any; True when one was loaded.

        What a killed attempt wrote after that checkpoint is dropped (metric records,
        unreferenced checkpoint folders), and the configured optimiser settings replace
        the saved ones (see :meth:`_apply_optim_settings`).
        """
        if self.is_main and self.ckpt_dir.is_dir():
            ckpt.recover(self.ckpt_dir)
            ckpt.prune(self.ckpt_dir)  # (so the names of later saves are an uninterrupted run's)
        dist.barrier()
        path = ckpt.resolve(self.ckpt_dir)
        if path is None:
            logger.info("resume: no checkpoint in %s, starting from scratch", self.ckpt_dir)
            if self.tracker.mark():
                self.tracker.rewind(0, 0)
            return False
        ckpt.load_weights(path, self.task)
        state = ckpt.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self._apply_optim_settings()
        self.progress = Progress(**state["progress"])
        self.epoch_meter = Meter(state["epoch_meter"])
        self.log_meter = Meter(state["log_meter"])
        self.history = list(state["history"])
        self.tracker.rewind(self.progress.step, state.get("tracker_mark"))
        self._restore_rng(state)  # last: nothing above may draw after it
        logger.info(
            "resumed from %s (epoch %d, step %d)", path, self.progress.epoch + 1, self.progress.step
        )
        return True

    def _apply_optim_settings(self) -> None:
        """The configured learning rates, betas, eps and weight decay over the loaded ones,
        and the current rate recomputed on the configured schedule.

        Loading an optimizer's state restores the settings it was saved with; without
        this, a run resumed with another learning rate would go on at the old one while
        its config.json said the new one. Unchanged settings give the same numbers, so an
        unchanged run stays bit-identical.
        """
        fresh = {g["group"]: g for g in param_groups(self.task, self.optim_cfg)}
        for group in self.optimizer.param_groups:
            new = fresh[group["group"]]
            group["initial_lr"], group["weight_decay"] = new["lr"], new["weight_decay"]
            group["betas"], group["eps"] = self.optim_cfg.betas, self.optim_cfg.eps
        scheduler = self.scheduler
        scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        step = scheduler.last_epoch
        for group, base, factor in zip(
            self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(step)
        scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _restore_rng(self, state: dict[str, Any]) -> None:
        ranks = state.get("rng_ranks") or []
        if len(ranks) == self.world_size:
            ckpt.set_rng_state(ranks[self.rank])
            return
        ckpt.set_rng_state(state["rng"])
        if self.world_size > 1:  # another world size: fresh per-rank streams, still seeded
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.progress.step) * 997 + self.rank)


def _stream_length(dataset: IterableDataset) -> int:
    """Samples per rank per epoch of a stream: it must say (``epoch_length``)."""
    length = getattr(dataset, "epoch_length", None)
    if length is None:
        raise ValueError(
            "data.epoch_length: a streamed dataset needs samples per rank per epoch (the "
            "loop sizes its schedule by it, and DDP ranks must take equal step counts)"
        )
    return int(length)


def _reduced(meter: Meter) -> Meter:
    """The meter summed over ranks (itself in a single process)."""
    return Meter(all_reduce_sums(meter.state())) if dist.is_distributed() else meter


def _monitor(cfg: TrainConfig, task: Task, has_val: bool) -> tuple[str, str]:
    """The metric to watch: as configured, else the task's on val, else the training loss."""
    if cfg.monitor:
        return cfg.monitor, cfg.monitor_mode or monitor_mode_of(cfg.monitor)
    if has_val:
        return f"val/{task.monitor}", cfg.monitor_mode or task.monitor_mode
    return "train/loss", cfg.monitor_mode or "min"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """One summary line: ``train/loss 0.4123  val/accuracy 0.9310 ...``."""
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())

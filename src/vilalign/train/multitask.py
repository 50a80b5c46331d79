"""Multi-dataset fine-tuning, as in vilbert-multi-task: one shared model, a head per dataset.

Every optimiser step takes one batch of one dataset, in its own batch size; which dataset
comes next is a fixed function of (seed, epoch, position in the epoch):

- ``round_robin``: the datasets in turn, in the run file's order;
- ``proportional``: drawn with probability proportional to training-set size, from a
  generator seeded by (seed, epoch).

Each dataset is read as an endless stream of shuffled passes (pass ``k`` of dataset ``d``
in epoch ``e`` is a permutation seeded by (seed, e, d, k)), cut into full batches. So the
loop's saved ``batch_in_epoch`` is the whole data position: a resumed run rebuilds the
same visit order, counts how many batches each dataset already gave, and continues each
stream where it stopped (the single-dataset loop resumes the same way from its sample
count).

Under DDP every rank follows the same visit order; batch ``k`` of a dataset is the ``k``-th
run of ``batch_size x ranks`` stream positions, each rank taking its own ``batch_size``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from vilalign import distributed as dist
from vilalign.data.types import Batch
from vilalign.model.heads import ClassificationHead
from vilalign.train.config import OptimConfig, TrainConfig
from vilalign.train.loop import EpochCallback, StepCallback, Trainer, preserved_rng
from vilalign.train.tasks import FinetuneTask, StepResult, Task
from vilalign.train.tracker import Tracker

#: ``batch.extras`` key naming the dataset a batch came from (set by :class:`TaggedCollate`).
DATASET_KEY = "dataset"
#: The metric averaged over datasets: each dataset's own monitored metric (``val/mean``).
MEAN = "mean"

SamplingMode = Literal["round_robin", "proportional"]


def _seed(*parts: int) -> int:
    """One 32-bit seed from several integers (independent streams per part)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------- the module


class MultiTaskModule(Task):
    """The shared model plus one :class:`ClassificationHead` per dataset (``heads.<name>``).

    A batch goes to the head named by ``batch.extras["dataset"]``; the step's loss is that
    dataset's task loss times its weight. Loss and metrics are the per-dataset
    :class:`FinetuneTask`'s (``tasks[name]``), run on the shared model with its own head.
    """

    name = "multitask"
    monitor = MEAN

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, str],
        num_labels: Mapping[str, int],
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(model)
        size, dropout = model.fused_size, model.config.head_dropout
        self.heads = nn.ModuleDict(
            {name: ClassificationHead(size, num_labels[name], dropout) for name in tasks}
        )
        # A plain dict, not registered: each task holds the shared model and a head of
        # self.heads, so registering them would list every shared weight once per dataset.
        self.tasks: dict[str, FinetuneTask] = {
            name: FinetuneTask(model, kind, self.heads[name]) for name, kind in tasks.items()
        }
        weights = dict(loss_weights or {})
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in tasks}
        modes = {task.monitor_mode for task in self.tasks.values()}
        if len(modes) > 1:
            raise ValueError(
                f"tasks: their metrics rise and fall ({modes}): no mean to monitor; "
                "name one dataset's metric in train.monitor"
            )
        self.monitor_mode = modes.pop()

    def forward(self, batch: Batch) -> StepResult:
        name = batch.extras.get(DATASET_KEY)
        if name not in self.tasks:
            raise ValueError(
                f"batch.extras[{DATASET_KEY!r}]: {name!r} is not a dataset of this run "
                f"({', '.join(self.tasks)})"
            )
        result = self.tasks[name](batch)
        loss = result.loss * self.loss_weights[name]
        logs = {"loss": loss.detach(), f"{name}/loss": result.loss.detach()}
        return StepResult(loss, logs, result.outputs)


# ---------------------------------------------------------------------------- the data


class TaggedCollate:
    """A collate function that also names the batch's dataset (picklable for workers)."""

    def __init__(self, collate: Callable[[list], Batch], name: str) -> None:
        self.collate, self.name = collate, name

    def __call__(self, samples: list) -> Batch:
        batch = self.collate(samples)
        batch.extras[DATASET_KEY] = self.name
        return batch


class StreamBatches(Sampler[list[int]]):
    """Batches ``first .. first + count - 1`` of one dataset read as an endless stream.

    The stream is pass after pass of shuffles (pass ``k`` seeded by ``(seed, k)``) cut into
    batches of ``batch_size x world`` positions; this rank takes its ``batch_size`` of each.
    Every batch is full; one may straddle two passes.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        first: int,
        count: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if size < 1:
            raise ValueError("StreamBatches: the dataset is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.first, self.count, self.rank, self.world = first, count, rank, world

    def _pass(self, k: int) -> list[int]:
        gen = torch.Generator().manual_seed(_seed(self.seed, k))
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        cached: tuple[int, list[int]] = (-1, [])
        for b in range(self.first, self.first + self.count):
            start = (b * self.world + self.rank) * self.batch_size
            indices = []
            for pos in range(start, start + self.batch_size):
                k, offset = divmod(pos, self.size)
                if cached[0] != k:
                    cached = (k, self._pass(k))
                indices.append(cached[1][offset])
            yield indices

    def __len__(self) -> int:
        return self.count


@dataclass
class TaskData:
    """One dataset's training split, batch size and collate function."""

    name: str
    train: Dataset
    batch_size: int
    collate: Callable[[list], Batch]


def visit_order(
    sizes: Sequence[int], mode: SamplingMode, length: int, seed: int, epoch: int
) -> list[int]:
    """The dataset index of each of an epoch's ``length`` batches."""
    if mode == "round_robin":
        return [i % len(sizes) for i in range(length)]
    if mode == "proportional":
        probs = torch.tensor(sizes, dtype=torch.float64)
        gen = torch.Generator().manual_seed(_seed(seed, epoch))
        return torch.multinomial(probs / probs.sum(), length, True, generator=gen).tolist()
    raise ValueError(f"sampling.mode: unknown mode {mode!r} (round_robin, proportional)")


def default_epoch_length(batches: Sequence[int], mode: SamplingMode) -> int:
    """Round robin: one pass over the dataset with the most batches, each dataset taking
    as many turns; proportional: the datasets' batches summed (one pass of each, on average).
    """
    return len(batches) * max(batches) if mode == "round_robin" else sum(batches)


class MultiTaskBatches:
    """An epoch's training batches, interleaved over datasets, from any position in it."""

    def __init__(
        self,
        datasets: Sequence[TaskData],
        mode: SamplingMode = "round_robin",
        steps_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if not datasets:
            raise ValueError("datasets: a multi-dataset run needs at least one dataset")
        self.datasets = list(datasets)
        self.mode, self.seed = mode, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        per_rank = [
            math.ceil(math.ceil(len(d.train) / self.world) / d.batch_size) for d in self.datasets
        ]
        self.epoch_length = steps_per_epoch or default_epoch_length(per_rank, mode)

    def order(self, epoch: int) -> list[int]:
        sizes = [len(d.train) for d in self.datasets]
        return visit_order(sizes, self.mode, self.epoch_length, self.seed, epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` from its ``start``-th on, each tagged with its
        dataset (``batch.extras["dataset"]``)."""
        order = self.order(epoch)
        done, todo = Counter(order[:start]), Counter(order[start:])
        streams = {d: iter(self._loader(d, epoch, done[d], todo[d])) for d in sorted(todo)}
        for d in order[start:]:
            yield next(streams[d])

    def _loader(self, d: int, epoch: int, first: int, count: int) -> DataLoader:
        data = self.datasets[d]
        sampler = StreamBatches(
            len(data.train),
            data.batch_size,
            _seed(self.seed, epoch, d),
            first,
            count,
            self.rank,
            self.world,
        )
        return DataLoader(
            data.train,
            batch_sampler=sampler,
            collate_fn=TaggedCollate(data.collate, data.name),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # its own generator: starting the iterator must not draw on the global RNG
            generator=torch.Generator().manual_seed(_seed(self.seed, epoch, d, first)),
        )


# ---------------------------------------------------------------------------- the loop


class MultiTaskTrainer(Trainer):
    """The one loop, fed interleaved batches, evaluating every dataset on its own.

    Evaluation reports ``<split>/<dataset>/<metric>`` for each dataset (its task's loss
    and metrics) and ``<split>/mean``, the mean of each dataset's own monitored metric
    (the default metric to monitor).
    """

    def __init__(
        self,
        task: MultiTaskModule,
        cfg: TrainConfig,
        optim: OptimConfig,
        run_dir: str | Path,
        data: MultiTaskBatches,
        val_data: Mapping[str, Dataset] | None = None,
        tracker: Tracker | None = None,
        callbacks: Sequence[EpochCallback] = (),
        step_callbacks: Sequence[StepCallback] = (),
    ) -> None:
        self.data = data  # before the base class: it sizes the schedule from it
        self._collates = {d.name: d.collate for d in data.datasets}
        self._batch_sizes = {d.name: d.batch_size for d in data.datasets}
        train = ConcatDataset([d.train for d in data.datasets])
        super().__init__(
            task,
            cfg,
            optim,
            run_dir,
            train,
            val_data or None,  # type: ignore[arg-type]  (a mapping: see evaluate)
            tracker=tracker,
            callbacks=callbacks,
            step_callbacks=step_callbacks,
        )

    @property
    def accumulation_steps(self) -> int:
        return 1  # one dataset's batch per step (the config refuses target_batch_size)

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.data.epoch_length

    def train_batches(self) -> Iterator[Batch]:
        p = self.progress
        return self.data.batches(p.epoch, p.batch_in_epoch)

    def evaluate(  # type: ignore[override]
        self, datasets: Mapping[str, Dataset], split: str = "val"
    ) -> dict[str, float]:
        """Each dataset with its own task, batch size and collate; plus ``<split>/mean``."""
        out: dict[str, float] = {}
        monitored = []
        for name, dataset in datasets.items():
            task = self.task.tasks[name]
            loader = self.loader(
                dataset,
                shuffle=False,
                batch_size=self._batch_sizes[name],
                collate_fn=self._collates[name],
            )
            with preserved_rng():
                metrics = self.evaluate_loader(loader, len(dataset), task.metrics, task=task)
            out.update({f"{split}/{name}/{k}": v for k, v in metrics.items()})
            monitored.append(metrics[task.monitor])
        if monitored:
            out[f"{split}/{MEAN}"] = float(np.mean(monitored))
        return out

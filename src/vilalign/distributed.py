"""Many processes, one job: ``torch.distributed`` as launched by ``torchrun``.

The process-group helpers that training and analysis both need, written once and owned
by neither (training-only collectives, such as the gathered contrastive losses, live in
:mod:`vilalign.train.distributed`; gathering collected representations in
:mod:`vilalign.analysis.collect`):

* :func:`init_distributed` — the process group from the torchrun environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL on CUDA, gloo on CPU;
  a no-op in a plain single process.
* rank helpers (:func:`get_rank`, :func:`get_world_size`, :func:`is_main_process`,
  :func:`barrier`, :func:`local_only`) and :func:`rank_zero_only`, so that one process
  writes files.
* :class:`RankShard` — ``DistributedSampler``'s split for any index sampler: rank ``r`` of
  ``W`` takes positions ``r::W`` of the (padded) order, so every global micro-batch is a
  contiguous block of the single-process order — the data position on resume is "samples
  of the epoch consumed", valid for any world size.
* :func:`broadcast_object`, :func:`all_gather_object`, :func:`gather_in_order` — one
  decision shared by all ranks, and per-sample rows back in the sampler's order.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ---------------------------------------------------------------------------- process group


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as torchrun sets it: known before the process group exists (for logging)."""
    return int(os.environ.get("RANK", "0"))


_local_only = False


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group.

    False inside :func:`local_only`, whatever the process group.
    """
    if _local_only:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only() -> Generator[None, None, None]:
    """Code that one rank runs alone (epoch callbacks on rank 0) behaves as one process.

    Inside, every helper here (and so the loaders, evaluation, gathered losses and the
    alignment analysis) sees a world of one: no collective is started that the other
    ranks, waiting at a barrier, would never join.
    """
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the one process that logs, writes checkpoints and reports."""
    return get_rank() == 0


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun describes (once) and return this process's device.

    Single process (no ``WORLD_SIZE`` > 1): nothing to join; ``device`` resolved as usual
    ('auto': cuda when available). Under torchrun: NCCL with ``cuda:LOCAL_RANK`` when CUDA is
    used, gloo on CPU. ``timeout_s`` bounds how long a rank waits for the others (rank 0
    alone runs the epoch callbacks, e.g. the alignment analysis, while the others wait).
    """
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if env_world_size() <= 1:
        return torch.device(("cuda" if use_cuda else "cpu") if device == "auto" else device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)  # before NCCL init: one GPU per process
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=target if use_cuda else None,
        )
        rank, world = dist.get_rank(), dist.get_world_size()
        logger.info("process group: rank %d of %d (%s, %s)", rank, world, backend, target)
    return target


def cleanup() -> None:
    """Leave the process group (end of a command); harmless when there is none."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``fn`` on rank 0 only (returns None elsewhere); no synchronisation implied."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (a decision all ranks must share)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """One picklable object from every rank, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------- data


class RankShard(Sampler[int]):
    """This rank's share of another sampler's order, as ``DistributedSampler`` splits it.

    The order is padded (by repeating its head) to a multiple of the world size, then rank
    ``r`` takes positions ``r, r + W, r + 2W, ...``: every rank gets the same count (DDP
    needs equal step counts), and the ``j``-th micro-batches of all ranks together are
    positions ``[j·B·W, (j+1)·B·W)`` of the order — the same samples one process with a
    ``W`` times larger batch would take. Padding repeats at most ``W - 1`` samples per epoch.
    """

    def __init__(self, sampler: Sampler[int], rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        if not order:
            return iter(())
        pad = -len(order) % self.world_size
        order += (order * math.ceil(pad / len(order)))[:pad]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.world_size)  # type: ignore[arg-type]


def local_slots_kept(count: int, total: int, rank: int, world_size: int) -> torch.Tensor:
    """Which of a rank's ``count`` :class:`RankShard` positions are real (not padding)."""
    return torch.arange(count) * world_size + rank < total


def gather_in_order(local: torch.Tensor, total: int) -> torch.Tensor:
    """Undo :class:`RankShard`: every rank's per-sample rows back in the sampler's order.

    ``local`` holds this rank's rows (its positions ``r, r + W, ...``, padding included);
    the result has the ``total`` rows of the unpadded order, the same on every rank.
    """
    if not is_distributed():
        return local[:total]
    parts = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(parts, local.contiguous())
    stacked = torch.stack(parts, dim=1)  # (n, W, ...): position j·W + r is [j, r]
    return stacked.reshape(-1, *local.shape[1:])[:total]

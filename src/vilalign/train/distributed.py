"""Many processes, one run: ``torch.distributed`` as launched by ``torchrun``.

What the training loop and the objectives need from DDP, written once:

* :func:`init_distributed` — the process group from the torchrun environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL on CUDA, gloo on CPU;
  a no-op in a plain single process.
* rank helpers (:func:`get_rank`, :func:`get_world_size`, :func:`is_main_process`,
  :func:`barrier`) and :func:`rank_zero_only`, so that one process writes files.
* :class:`RankShard` — ``DistributedSampler``'s split for any index sampler: rank ``r`` of
  ``W`` takes positions ``r::W`` of the (padded) order, so every global micro-batch is a
  contiguous block of the single-process order — the data position on resume is "samples
  of the epoch consumed", valid for any world size.
* :func:`all_gather_with_grad` and :func:`gathered_info_nce` — contrastive losses with the
  negatives of every rank, gradients flowing back to the rank that produced each row.
* :func:`all_reduce_sums`, :func:`gather_in_order`, :func:`gather_representations` —
  metrics and alignment measures computed on the whole split, not on rank 0's share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")  # a dataclass of gathered representations


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


# ---------------------------------------------------------------------------- gathering


class _AllGatherWithGrad(torch.autograd.Function):
    """All ranks' equally shaped tensors, stacked (W, ...); the gradient returns to its owner.

    Every rank's loss may depend on every row, so the gradient of the summed per-rank losses
    with respect to this rank's rows is the sum over ranks of their gradients of the
    gathered tensor, at this rank's slice: an all-reduce (sum) of the incoming gradient,
    then the own slice. (``torch.distributed.nn.all_gather`` does the same with a
    reduce-scatter, which gloo lacks.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor)
        return torch.stack(out)  # (W, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _padded_gather(x: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, list[int]]:
    # Ranks may hold different row counts (masked patches, matching pairs): gather the
    # counts, pad every rank's rows to the largest, gather, then drop the padding.
    sizes = [int(s) for s in all_gather_object(x.shape[0])]
    pad = max(sizes) - x.shape[0]
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad)) if pad else x
    if with_grad:
        stacked = _AllGatherWithGrad.apply(padded)  # (W, max, ...)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        stacked = torch.stack(parts)
    return torch.cat([stacked[r, :n] for r, n in enumerate(sizes)]), sizes


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Rows of every rank concatenated in rank order (N, ...), and each rank's row count.

    Differentiable: the gradient that any rank's loss sends to a row reaches the rank that
    produced it. Row counts may differ between ranks. Single process: ``(x, [len(x)])``.
    """
    if not is_distributed():
        return x, [x.shape[0]]
    return _padded_gather(x, with_grad=x.requires_grad)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order, without gradient (metrics, analysis)."""
    if not is_distributed():
        return x
    return _padded_gather(x.detach(), with_grad=False)[0]


def gathered_info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float, gather: bool = True
) -> torch.Tensor:
    """InfoNCE of this rank's queries against the keys of *every* rank (the negatives).

    Row ``i`` of ``query`` (n, D) should pick row ``i`` of ``keys`` (n, D). Across ranks it
    is the "local loss" of open_clip: each rank scores its own n queries against all N
    keys (n × N logits, not N × N), and returns ``W · (sum of its cross-entropies) / N``.
    The mean of that over ranks — what DDP's gradient averaging optimises — is exactly the
    single-process loss on the concatenated batch, for any split of the N rows; with equal
    splits each rank's value is simply its queries' mean. Ranks with no rows still take
    part (collectives must match). Single process or ``gather=False``: plain InfoNCE.
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    if not (gather and is_distributed()):
        if len(q) == 0:
            return q.sum() + k.sum() * 0.0
        logits = q @ k.T / temperature  # (n, n)
        return F.cross_entropy(logits, torch.arange(len(q), device=q.device))
    all_keys, sizes = all_gather_with_grad(k)  # (N, D)
    rank, world, total = get_rank(), get_world_size(), sum(sizes)
    if total == 0:
        return q.sum() + all_keys.sum() * 0.0
    offset = sum(sizes[:rank])
    logits = q @ all_keys.T / temperature  # (n, N)
    target = torch.arange(offset, offset + len(q), device=q.device)
    summed = F.cross_entropy(logits, target, reduction="sum")
    # + 0 x keys: the gather's backward (a collective) must run on every rank, also on one
    # whose n = 0 leaves ``logits`` empty.
    return summed * (world / total) + all_keys.sum() * 0.0


def gathered_symmetric_info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float, gather: bool = True
) -> torch.Tensor:
    """CLIP's loss with every rank's negatives: the mean of a→b and b→a."""
    return 0.5 * (
        gathered_info_nce(a, b, temperature, gather) + gathered_info_nce(b, a, temperature, gather)
    )


# ---------------------------------------------------------------------------- metrics


def all_reduce_sums(sums: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Sum ``{name: [weighted sum, count]}`` (a Meter's state) over ranks.

    Names are united first, so a rank that never logged a name still takes part.
    """
    if not is_distributed():
        return {k: list(v) for k, v in sums.items()}
    names = sorted({n for names in all_gather_object(sorted(sums)) for n in names})
    table = torch.tensor([sums.get(n, [0.0, 0.0]) for n in names], dtype=torch.float64).reshape(
        len(names), 2
    )
    dist.all_reduce(table)
    return {n: [float(s), float(c)] for n, (s, c) in zip(names, table.tolist(), strict=True)}


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


def gather_representations(reps: R, total: int) -> R:
    """Per-rank :class:`~vilalign.analysis.collect.Representations` → the whole set's.

    Each rank collected its :class:`RankShard` positions of the first ``total`` samples;
    every view (pooled N×D, token N×T×D, the text mask) and the ids come back in sampler
    order on every rank, so the alignment measures see the same N samples as one process.
    """
    if not is_distributed():
        return reps
    per_rank = all_gather_object(list(zip(reps.ids, reps.image_ids, strict=True)))
    rows = [r[j] for j in range(len(per_rank[0])) for r in per_rank][:total]
    return dataclasses.replace(
        reps,
        ids=[sample for sample, _ in rows],
        image_ids=[image for _, image in rows],
        pooled={k: gather_in_order(v.contiguous(), total) for k, v in reps.pooled.items()},
        tokens={k: gather_in_order(v.contiguous(), total) for k, v in reps.tokens.items()},
        text_mask=None if reps.text_mask is None else gather_in_order(reps.text_mask, total),
    )

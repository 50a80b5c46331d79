"""Training-only collectives for DDP (the process group itself: :mod:`vilalign.distributed`).

* :func:`all_gather_with_grad` and :func:`gathered_info_nce` — contrastive losses with the
  negatives of every rank, gradients flowing back to the rank that produced each row.
* :func:`all_reduce_sums` — the loop's metric sums over the whole split, not rank 0's share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vilalign.distributed import all_gather_object, get_rank, get_world_size, is_distributed

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

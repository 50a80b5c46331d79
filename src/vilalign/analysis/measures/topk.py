"""Certified blocked k-nearest neighbours: float32 products, float64 answers, O(N·k) memory.

The dense form of the neighbour measures takes the top-k of an N×N float64 cosine Gram.
The blocked form here never holds more than a block of rows × N similarities:

1. each block of rows is multiplied with every unit row in float32 (half the time and
   memory of float64) and keeps its ``c`` best candidates (a running top-k per row);
2. a float32 dot product of unit vectors is within ``ε = γ_D(1+u)² + 2u + u²`` of the
   exact one (Higham 2002, Thm 3.1, for any summation order; ``u = 2⁻²⁴``,
   ``γ_D = D·u/(1 − D·u)``, the 2u from rounding the unit rows to float32). Candidates
   whose float32 values are more than 2ε apart are therefore in their exact order; only
   runs of candidates closer than that (near-ties) are recomputed in float64 and sorted
   exactly (ties: lower row index first);
3. *certification*: no row outside the candidates can be nearer than the smallest
   candidate's float32 value + ε, so every candidate more than 2ε above that value is
   exactly where the float64 ordering puts it: the *certified* prefix of the row's list.
   A row whose certified prefix is shorter than needed is recomputed in float64 against
   every row.

The neighbour sets are therefore those of the float64 cosines, not of float32 ones,
whatever the data — near-ties cost a few float64 dot products (or a float64 row), never a
different answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vilalign.analysis.measures import budget
from vilalign.analysis.measures.linalg import DTYPE, Tensor

if TYPE_CHECKING:
    from vilalign.analysis.measures.views import View

_UNIT_ROUNDING = 2.0**-24


@dataclass(frozen=True)
class Neighbours:
    """Candidate neighbours per row, nearest first, and how many of them are certified.

    ``index[i, :certified[i]]`` are exactly row i's nearest rows by float64 cosine (self
    excluded), in order; the rest are candidates whose order is not guaranteed.
    """

    index: Tensor  # (N, c) long
    certified: Tensor  # (N,) long


def float32_error(d: int) -> float:
    """Bound on |float32 dot − exact dot| of two unit vectors of width ``d``."""
    u = _UNIT_ROUNDING
    gamma = d * u / (1 - d * u)
    return gamma * (1 + u) ** 2 + 2 * u + u * u + 1e-12


def float32_products_exact_enough(device: torch.device) -> bool:
    """float32 products carry the error bound above only in true float32 (not TF32/bf16)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


def _sort_exact(cos: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
    """Candidates by descending cosine, ties by ascending row index (deterministic)."""
    by_index = cand.argsort(dim=1)
    cand, cos = cand.gather(1, by_index), cos.gather(1, by_index)
    order = torch.sort(cos, dim=1, descending=True, stable=True).indices
    return cand.gather(1, order), cos.gather(1, order)


#: Bytes of gathered rows per chunk: small enough to stay in cache while it is used.
_GATHER_BYTES = 8 * 2**20


def dots_at(view: View, rows: Tensor, index: Tensor) -> Tensor:
    """x_rows[b] · x_index[b, a] (B×k float64): N·k gathered dot products, in chunks."""
    k = index.shape[1]
    out = torch.empty(index.shape, dtype=DTYPE, device=view.device)
    step = max(1, _GATHER_BYTES // max(1, (k + 1) * view.d * 8))
    for a in range(0, rows.numel(), step):
        b = min(rows.numel(), a + step)
        own = view.take(rows[a:b])  # (b, D)
        other = view.take(index[a:b].reshape(-1)).view(b - a, k, view.d)
        out[a:b] = torch.einsum("bd,bkd->bk", own, other)
    return out


def cosines_at(view: View, rows: Tensor, index: Tensor) -> Tensor:
    """cos(x_rows[b], x_index[b, a]) in float64 (dot products divided by both norms)."""
    norms = view.row_norms()
    return dots_at(view, rows, index) / (norms[rows][:, None] * norms[index])


def _exact_order(view: View, own: Tensor, top: Tensor, cand: Tensor, eps: float) -> Tensor:
    """Reorder float32-sorted candidates into their exact order: only runs of values within
    2ε of each other are recomputed in float64 (a run's order is the only uncertain one)."""
    close = (top[:, :-1] - top[:, 1:]) <= 2 * eps  # (B, c-1): a and a+1 may be swapped
    in_run = torch.zeros_like(top, dtype=torch.bool)
    in_run[:, :-1] |= close
    in_run[:, 1:] |= close
    run = torch.cat([torch.zeros_like(close[:, :1]), ~close], dim=1).cumsum(dim=1)
    exact = torch.zeros(top.shape, dtype=DTYPE, device=top.device)
    where = in_run.nonzero()
    if where.numel():
        pairs = cand[where[:, 0], where[:, 1]][:, None]
        exact[where[:, 0], where[:, 1]] = cosines_at(view, own[where[:, 0]], pairs)[:, 0]
    # Sort by run (float32 order between runs is exact), then exact cosine, then index.
    key = torch.where(in_run, exact, 0.0)
    by_index = cand.argsort(dim=1)
    cand, key, run = (t.gather(1, by_index) for t in (cand, key, run))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    cand, run = cand.gather(1, order), run.gather(1, order)
    order = torch.sort(run, dim=1, stable=True).indices
    return cand.gather(1, order)


def _similarities(view: View, units: Tensor | None, queries: Tensor, own: Tensor) -> Tensor:
    """Cosines (B×N) of ``queries`` (unit rows) with every row; row ``own[b]`` → −inf."""
    if units is not None:
        sims = queries @ units.T
    else:  # float64, the columns streamed in blocks
        row_bytes = (view.d + queries.shape[0]) * 8
        cols = view.blocks(row_bytes, "k-NN similarities (float64)")
        sims = torch.cat([queries @ view.unit_rows(a, b).T for a, b in cols], dim=1)
    sims[torch.arange(sims.shape[0], device=sims.device), own] = -torch.inf
    return sims


def certified_neighbours(view: View, c: int, need: int) -> Neighbours:
    """Each row's ``c`` best candidates, at least ``need`` of them certified exact."""
    n, d = view.n, view.d
    fast = float32_products_exact_enough(view.device)
    units = view.unit32() if fast else None
    eps = float32_error(d) if fast else 1e-12
    index = torch.empty(n, c, dtype=torch.long, device=view.device)
    certified = torch.full((n,), c, dtype=torch.long, device=view.device)
    blocks = list(view.blocks(n * (4 if fast else 8) * 3, "k-NN similarities"))
    with budget.progress(len(blocks), float(n) * n * d, f"k-NN {view.name}") as bar:
        for start, stop in blocks:
            own = torch.arange(start, stop, device=view.device)
            queries = units[start:stop] if fast else view.unit_rows(start, stop)
            top, cand = _similarities(view, units, queries, own).topk(c, dim=1)
            top = top.to(DTYPE)
            index[start:stop] = _exact_order(view, own, top, cand, eps)
            if c < n - 1:  # with every other row a candidate, nothing is left outside
                certified[start:stop] = (top > top[:, -1:] + 2 * eps).sum(dim=1)
            bar.update(1)
    missing = (certified < need).nonzero()[:, 0]
    if missing.numel():
        index[missing] = exact_rows_topk(view, missing, c)
        certified[missing] = c
    return Neighbours(index, certified)


def exact_rows_topk(view: View, rows: Tensor, k: int) -> Tensor:
    """The k nearest rows of ``rows`` (float64 cosines against every row, self excluded),
    nearest first, ties by ascending index."""
    out = torch.empty(rows.numel(), k, dtype=torch.long, device=view.device)
    step = budget.block_rows(view.n * 8 * 3, rows.numel(), f"{view.name}: exact k-NN rows")
    for a in range(0, rows.numel(), step):
        own = rows[a : a + step].to(view.device)
        sims = _similarities(view, None, view.unit_take(own), own)
        top, cand = sims.topk(k, dim=1)
        out[a : a + step] = _sort_exact(top, cand)[0]
    return out

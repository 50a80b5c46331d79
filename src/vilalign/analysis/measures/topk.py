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
   exactly;
3. *certification*: no row outside the candidates can be nearer than the smallest
   candidate's float32 value + ε, so every candidate more than 2ε above that value is
   exactly where the float64 ordering puts it: the *certified* prefix of the row's list.
   A row whose certified prefix is shorter than needed is recomputed in float64 against
   every row.

The neighbour sets are therefore those of the float64 cosines, not of float32 ones,
whatever the data — near-ties cost a few float64 dot products (or a float64 row), never a
different answer.

Ties: cosines within :data:`TIE` of each other (duplicated rows — several samples
showing one image — differ only by float64 rounding, which differs between forms) are
equal, and equal cosines are ordered by lower row index, in every form. A run of ties
that straddles the end of a list is completed from the row, so the list holds the
lowest-index members.
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
#: Cosines closer than this are ties (float64 rounding of a dot product is ~1e-15).
TIE = 1e-12


@dataclass(frozen=True)
class Neighbours:
    """Candidate neighbours per row, nearest first, and how many of them are certified.

    ``index[i, :certified[i]]`` are exactly row i's nearest rows by float64 cosine (self
    excluded, ties by lower index), in order, and end with a whole run of ties; the rest
    are candidates whose order is not guaranteed. ``values`` are their cosines (exact
    where neighbours were close, else within the float32 bound: enough to order them).
    """

    index: Tensor  # (N, c) long
    values: Tensor  # (N, c) float64
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


def order_ties(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The order (B×c positions) of each row's candidates: by descending value, values
    within :data:`TIE` of their neighbour forming one run ordered by ascending index;
    and the run of each position (in that order)."""
    by_value = values.argsort(dim=1, descending=True)
    sorted_values = values.gather(1, by_value)
    gap = (sorted_values[:, :-1] - sorted_values[:, 1:]) > TIE
    run = torch.cat([torch.zeros_like(gap[:, :1]), gap], dim=1).long().cumsum(dim=1)
    key = run * (int(index.max()) + 2) + index.gather(1, by_value)
    within = key.argsort(dim=1)
    return by_value.gather(1, within), run.gather(1, within)


def _open_end(run: Tensor, k: int) -> Tensor:
    """Rows whose k-th position's run continues to the last fetched position."""
    return run[:, k - 1] == run[:, -1]


def topk_by_index(values: Tensor, k: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices and values of each row's k largest values, ties (within :data:`TIE`) by
    ascending index. A tie run reaching past the fetched candidates is fetched wider."""
    n = values.shape[1]
    width = min(n, width or k + 8)
    top, cand = values.topk(width, dim=1)
    order, run = order_ties(top, cand)
    index, kept = cand.gather(1, order)[:, :k], top.gather(1, order)[:, :k]
    if width < n:
        open_rows = _open_end(run, k).nonzero()[:, 0]
        if open_rows.numel():
            index[open_rows], kept[open_rows] = topk_by_index(values[open_rows], k, 4 * width)
    return index, kept


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


def _ordered_candidates(view: View, own: Tensor, top: Tensor, cand: Tensor, eps: float):
    """Float32-sorted candidates in their exact order, with the keys that order them and
    a lower bound on each exact cosine. Only runs of float32 values within 2ε of each
    other are recomputed in float64 (the only uncertain order)."""
    close = (top[:, :-1] - top[:, 1:]) <= 2 * eps  # (B, c-1): a and a+1 may be swapped
    in_run = torch.zeros_like(top, dtype=torch.bool)
    in_run[:, :-1] |= close
    in_run[:, 1:] |= close
    key = top.clone()
    where = in_run.nonzero()
    if where.numel():
        pairs = cand[where[:, 0], where[:, 1]][:, None]
        key[where[:, 0], where[:, 1]] = cosines_at(view, own[where[:, 0]], pairs)[:, 0]
    lower = torch.where(in_run, key, top - eps)
    order, run = order_ties(key, cand)
    return cand.gather(1, order), key.gather(1, order), lower.gather(1, order), run


def _certified(lower: Tensor, run: Tensor, bound: Tensor) -> Tensor:
    """Leading positions in whole runs that lie above ``bound`` (+ a tie) for sure."""
    run_min = torch.full_like(lower, torch.inf).scatter_reduce(1, run, lower, "amin")
    safe = run_min.gather(1, run) > (bound + TIE)[:, None]
    return safe.long().cumprod(dim=1).sum(dim=1)


def certified_neighbours(view: View, c: int, need: int) -> Neighbours:
    """Each row's ``c`` best candidates, at least ``need`` of them certified exact."""
    n, d = view.n, view.d
    fast = float32_products_exact_enough(view.device)
    units = view.unit32() if fast else None
    eps = float32_error(d) if fast else 1e-12
    index = torch.empty(n, c, dtype=torch.long, device=view.device)
    values = torch.empty(n, c, dtype=DTYPE, device=view.device)
    certified = torch.full((n,), c, dtype=torch.long, device=view.device)
    blocks = list(view.blocks(n * (4 if fast else 8) * 3, "k-NN similarities"))
    with budget.progress(len(blocks), float(n) * n * d, f"k-NN {view.name}") as bar:
        for start, stop in blocks:
            own = torch.arange(start, stop, device=view.device)
            queries = units[start:stop] if fast else view.unit_rows(start, stop)
            top, cand = _similarities(view, units, queries, own).topk(c, dim=1)
            cand, key, lower, run = _ordered_candidates(view, own, top.to(DTYPE), cand, eps)
            index[start:stop], values[start:stop] = cand, key
            if c < n - 1:  # with every other row a candidate, nothing is left outside
                certified[start:stop] = _certified(lower, run, top[:, -1].to(DTYPE) + eps)
            bar.update(1)
    missing = (certified < need).nonzero()[:, 0]
    if missing.numel():
        index[missing], values[missing], certified[missing] = exact_rows(view, missing, c)
    return Neighbours(index, values, certified)


def exact_rows(view: View, rows: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k nearest rows of ``rows`` from float64 cosines against every row (self
    excluded), their cosines, and how many lead in closed tie runs."""
    m = rows.numel()
    index = torch.empty(m, k, dtype=torch.long, device=view.device)
    values = torch.empty(m, k, dtype=DTYPE, device=view.device)
    closed = torch.full((m,), k, dtype=torch.long, device=view.device)
    wide = min(k + 1, view.n - 1)  # one more: does the last run go on?
    step = budget.block_rows(view.n * 8 * 3, m, f"{view.name}: exact k-NN rows")
    for a in range(0, m, step):
        own = rows[a : a + step].to(view.device)
        idx, vals = topk_by_index(_similarities(view, None, view.unit_take(own), own), wide)
        index[a : a + step], values[a : a + step] = idx[:, :k], vals[:, :k]
        if wide > k:
            _, run = order_ties(vals, idx)
            straddles = run[:, k - 1] == run[:, k]
            first = (run == run[:, k - 1 : k]).long().argmax(dim=1)
            closed[a : a + step] = torch.where(straddles, first, k)
    return index, values, closed


def exact_rows_topk(view: View, rows: Tensor, k: int) -> Tensor:
    """The k nearest rows of ``rows`` (float64 cosines against every row, self excluded),
    nearest first, ties by ascending index."""
    return exact_rows(view, rows, k)[0]

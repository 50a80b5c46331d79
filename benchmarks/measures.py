"""Speed of the alignment-measure suite, side by side with its floor and reference code.

For L layers of paired text/image representations (N×D each, CPU) it times:

* the floor: the two N×N Gram matrices per layer in float64, which every kernel and
  neighbourhood measure needs at least (numpy ``a @ a.T``: BLAS ``syrk``);
* our core suite (every measure but Wasserstein, SVCCA and PWCCA) through
  ``compute_measures``, which shares Gram matrices, k-NN lists and factors;
* the full suite, and each measure on its own (with its own Gram matrices);
* reference implementations where they have the measure, on the same inputs:
  platonic-rep ``metrics.py`` (``--platonic-rep DIR``, a checkout of
  minyoungg/platonic-rep; float32 unit-norm features as its measure_alignment.py feeds
  it) and the functions of Kornblith et al.'s CKA demo notebook (``--kornblith FILE``,
  a .py holding the notebook's first code cell, or the Demo.ipynb itself).

Reference code is not shipped with vilalign; point the options at your own copies.
Prints times and ratios; asserts nothing about time.

    python benchmarks/measures.py [--layers 8] [--n 1000] [--dim 768] [--repeats 3]

``--scaling`` prints instead the scaling table of issue 18: for N in ``--sizes`` × D, each
measure family's time, peak memory (resident set of a fresh process) and the ratio to its
arithmetic floor — the products it cannot avoid, timed in a fresh process of the same run
on the same data. The layers are written to ``.npy`` files first (as ``vilalign analyse
--n-samples all`` collects them) and measured one at a time, read as the alignment table
reads them; ``--memory-gb`` is the measures' budget.

    python benchmarks/measures.py --scaling [--sizes 1000,10000,100000] [--layers 8]
        [--families linear,knn,...] [--layers-for knn=1,rbf=1] [--memory-gb 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vilalign.analysis import measures as M
from vilalign.commands import HelpFormatter

SLOW = ("wasserstein", "svcca", "pwcca")
# Measures that need a D×D decomposition (SVD / Cholesky of covariances): their cost
# scales with D³, not with the N×N Gram matrices of the floor.
DECOMPOSITION = ("cca", "cca_squared", "procrustes")
PLATONIC = {
    "cka_linear": ("cka", {}),
    "cka_unbiased": ("unbiased_cka", {}),
    "mutual_knn": ("mutual_knn", {"topk": 10}),
    "cycle_knn": ("cycle_knn", {"topk": 10}),
    "cknna": ("cknna", {"topk": 10}),
}


def make_layers(layers: int, n: int, dim: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Paired float32 representations whose shared part grows with depth."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    out = []
    for layer in range(layers):
        share = (layer + 1) / (layers + 1)
        pairs = []
        for _ in range(2):
            mix = torch.randn(64, dim, generator=g) / 8
            noise = torch.randn(n, dim, generator=g)
            pairs.append(share * z @ mix + (1 - share) * noise + 0.5)
        out.append(tuple(pairs))
    return out


def best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best time of each function, running them in turn ``repeats`` times."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_time(fn, 1))
    return best


def floor(data) -> None:
    """The two float64 Gram matrices of every layer, the fastest way available on CPU:
    numpy's ``a @ a.T``, which BLAS computes with ``syrk`` (half a general product)."""
    for x, y in data:
        xd, yd = x.double().numpy(), y.double().numpy()
        _ = xd @ xd.T
        _ = yd @ yd.T


def suite(data, names: list[str]) -> None:
    for x, y in data:
        M.compute_measures(x, y, names)


def load_module(path: Path, name: str) -> types.ModuleType:
    """Import a reference file; a notebook's code cells are joined into one module."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join(
            "".join(c["source"])
            for c in cells
            if c["cell_type"] == "code" and "def " in "".join(c["source"])
        )
        module = types.ModuleType(name)
        exec(compile(code, str(path), "exec"), module.__dict__)
        return module
    # platonic-rep imports torchaudio only for its edit-distance metric: stub it if absent.
    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        stub = types.ModuleType("torchaudio")
        stub.functional = types.ModuleType("torchaudio.functional")
        sys.modules.setdefault("torchaudio", stub)
        sys.modules.setdefault("torchaudio.functional", stub.functional)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_platonic(data, directory: Path, repeats: int) -> list[tuple[str, float, float]]:
    ref = load_module(directory / "metrics.py", "platonic_metrics").AlignmentMetrics
    normed = [(F.normalize(x, dim=-1), F.normalize(y, dim=-1)) for x, y in data]
    rows = []
    for ours, (theirs, kw) in PLATONIC.items():
        t_ours, t_ref = interleaved(
            [
                lambda o=ours: suite(normed, [o]),
                lambda t=theirs, k=kw: [getattr(ref, t)(x, y, **k) for x, y in normed],
            ],
            repeats,
        )
        rows.append((f"platonic-rep {theirs}", t_ours, t_ref))
    t_ours, t_ref = interleaved(
        [
            lambda: suite(normed, list(PLATONIC)),
            lambda: [getattr(ref, t)(x, y, **k) for x, y in normed for t, k in PLATONIC.values()],
        ],
        repeats,
    )
    rows.append(("platonic-rep all 5 together", t_ours, t_ref))
    return rows


def compare_kornblith(data, path: Path, repeats: int) -> list[tuple[str, float, float]]:
    nb = load_module(path, "kornblith_demo")
    # Both sides get the same float64 inputs (converted outside the timed region).
    data = [(x.double(), y.double()) for x, y in data]
    arrays = [(x.numpy(), y.numpy()) for x, y in data]
    cases = {
        "cka_linear": lambda x, y: nb.cka(nb.gram_linear(x), nb.gram_linear(y)),
        "cka_unbiased": lambda x, y: nb.cka(nb.gram_linear(x), nb.gram_linear(y), debiased=True),
        "cka_rbf": lambda x, y: nb.cka(nb.gram_rbf(x), nb.gram_rbf(y)),
        "cca_squared": lambda x, y: nb.cca(x, y),
    }
    rows = []
    for ours, fn in cases.items():
        t_ours, t_ref = interleaved(
            [lambda o=ours: suite(data, [o]), lambda f=fn: [f(x, y) for x, y in arrays]],
            repeats,
        )
        rows.append((f"Kornblith notebook {ours}", t_ours, t_ref))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=8,
        help="number of layers of paired representations",
    )
    parser.add_argument("--n", type=int, default=1000, help="samples per layer (N)")
    parser.add_argument("--dim", type=int, default=768, help="feature width D")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats, best of")
    parser.add_argument(
        "--platonic-rep",
        type=Path,
        default=None,
        help="a checkout of minyoungg/platonic-rep (folder holding metrics.py) to time beside "
        "ours (default: none, not timed)",
    )
    parser.add_argument(
        "--kornblith",
        type=Path,
        default=None,
        help="Kornblith et al.'s CKA demo notebook (.ipynb) or a .py of its first code cell "
        "(default: none, not timed)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and BLAS threads (default: left as they are)",
    )
    parser.add_argument("--scaling", action="store_true", help="print the scaling table instead")
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="--scaling: comma list of N",
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help="--scaling: comma list of measure families",
    )
    parser.add_argument(
        "--layers-for",
        default="",
        help="--scaling: at most this many layers for these families, e.g. knn=1,rbf=1 "
        "(default: none, all get --layers)",
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="--scaling: the measures' memory budget in GB; above it, blocked forms "
        "(default: the analysis default, 2.0)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=200,
        help="--scaling: permutations of the null_* families",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="--scaling: folder for the layer files, reused if complete "
        "(default: a new temporary folder)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with blas_threads(args.threads):
        if args.child:
            child(args)
        elif args.scaling:
            scaling(args)
        else:
            run(args)


@contextlib.contextmanager
def blas_threads(threads: int | None):
    """Pin torch's and numpy/scipy's BLAS threads (a shared machine makes OpenMP spin)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace) -> None:
    """Time everything and print the table."""
    # CCA at D=768, N=1000 warns that D1 + D2 > N - 1 (trivial correlations); expected here.
    logging.getLogger("vilalign").setLevel(logging.ERROR)
    data = make_layers(args.layers, args.n, args.dim)
    suite(make_layers(1, 50, 8), list(M.MEASURES))  # warm-up (lazy imports, allocators)
    core = [n for n in M.MEASURES if n not in SLOW]
    gram_only = [n for n in core if n not in DECOMPOSITION]
    print(
        f"{args.layers} layers × N={args.n} × D={args.dim}, CPU, "
        f"{torch.get_num_threads()} torch threads, best of {args.repeats}"
    )
    # Interleaved, best of `repeats`: on a shared machine the load drifts, and timing the
    # floor and the suite minutes apart would compare different machines.
    t_floor, t_core, t_gram = interleaved(
        [lambda: floor(data), lambda: suite(data, core), lambda: suite(data, gram_only)],
        args.repeats,
    )
    t_full = best_time(lambda: suite(data, list(M.MEASURES)), 1)
    line = "{:52s}{:9.3f}{:9.2f}{}"
    print(f"\n{'':52s}{'seconds':>9s}{'× floor':>9s}")
    print(line.format("floor: 2 float64 Gram matrices per layer", t_floor, 1.0, ""))
    print(
        line.format(
            f"core suite ({len(core)} measures, shared work)",
            t_core,
            t_core / t_floor,
            "   target <= 3",
        )
    )
    print(
        line.format(
            f"  of which no D×D decomposition ({len(gram_only)} measures)",
            t_gram,
            t_gram / t_floor,
            "",
        )
    )
    print(line.format("full suite (+ Wasserstein, SVCCA, PWCCA)", t_full, t_full / t_floor, ""))
    print("\neach measure alone (its own Gram matrices):")
    for name in M.MEASURES:
        t = best_time(lambda n=name: suite(data, [n]), 1)
        print(line.format(f"  {name}", t, t / t_floor, ""))

    rows = []
    if args.platonic_rep is not None:
        rows += compare_platonic(data, args.platonic_rep, args.repeats)
    if args.kornblith is not None:
        rows += compare_kornblith(data, args.kornblith, args.repeats)
    if rows:
        print(f"\n{'reference':42s}{'ours s':>9s}{'ref s':>9s}{'ours/ref':>9s}")
        for label, ours, ref in rows:
            print(f"{label:42s}{ours:9.3f}{ref:9.3f}{ours / ref:9.2f}")
    else:
        print("\n(no reference timings: pass --platonic-rep DIR and/or --kornblith FILE)")


# --------------------------------------------------------------------------- scaling table


def _pass_rows(row_bytes: float, n: int) -> int:
    """Block rows as the measures size them (a quarter of the budget per block)."""
    from vilalign.analysis.measures import budget

    return max(1, min(n, int(budget.budget_bytes() * 0.25 // row_bytes)))


def floor_products(x: torch.Tensor, y: torch.Tensor) -> None:
    """xᵀx, yᵀy and xᵀy in float64 over row blocks: feature-space CKA's and CCA's floor."""
    step = _pass_rows((x.shape[1] + y.shape[1]) * 16, x.shape[0])
    for a in range(0, x.shape[0], step):
        xb, yb = x[a : a + step].double().numpy(), y[a : a + step].double().numpy()
        _ = xb.T @ xb, yb.T @ yb, xb.T @ yb


def floor_linear(x: torch.Tensor, y: torch.Tensor) -> None:
    """Linear CKA's floor: the two N×N Grams or the feature products, whichever is less
    arithmetic (N²(Dx+Dy)/2 against N(Dx²+Dy²)/2 + N·Dx·Dy), the choice the measure makes."""
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n * (dx + dy) / 2 < (dx * dx + dy * dy) / 2 + dx * dy:
        floor(list(zip([x], [y], strict=True)))
    else:
        floor_products(x, y)


def floor_neighbours(x: torch.Tensor, y: torch.Tensor) -> None:
    """Unit rows times every unit row in float32, block by block: the k-NN lists' floor."""
    for v in (x, y):
        unit = F.normalize(v.float(), dim=1)
        step = _pass_rows(v.shape[0] * 12, v.shape[0])
        for a in range(0, v.shape[0], step):
            _ = unit[a : a + step] @ unit.T


def floor_distances(x: torch.Tensor, y: torch.Tensor) -> None:
    """Every pairwise product in float64, block by block (both views): RBF kernels' floor."""
    for v in (x, y):
        step = _pass_rows(v.shape[0] * 32, v.shape[0])
        cols = _pass_rows(v.shape[1] * 16, v.shape[0])
        for a in range(0, v.shape[0], step):
            rows = v[a : a + step].double()
            for b in range(0, v.shape[0], cols):
                _ = rows @ v[b : b + cols].double().T


def _dense_rows(n: int, bytes_per_n2: int) -> torch.Tensor:
    from vilalign.analysis.measures import budget
    from vilalign.analysis.measures.views import SUBSAMPLE_SEED

    m = min(n, budget.largest_dense_n(bytes_per_n2))
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSAMPLE_SEED))
    return rows[:m] if m < n else torch.arange(n)


def floor_grams_of_rows(bytes_per_n2: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The two Gram matrices of the rows a subsampling measure keeps (RSA, Wasserstein)."""

    def floor(x: torch.Tensor, y: torch.Tensor) -> None:
        rows = _dense_rows(x.shape[0], bytes_per_n2)
        for v in (x, y):
            a = v[rows].double().numpy()
            _ = a @ a.T

    return floor


def floor_minibatches(x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> None:
    for a in range(0, x.shape[0], batch):
        for v in (x, y):
            b = v[a : a + batch].double().numpy()
            _ = b @ b.T


def floor_rows(x: torch.Tensor, y: torch.Tensor) -> None:
    """One float64 pass over both views' rows, in blocks."""
    step = _pass_rows((x.shape[1] + y.shape[1]) * 16, x.shape[0])
    for a in range(0, x.shape[0], step):
        _ = (x[a : a + step].double() * y[a : a + step].double()).sum(dim=1)


def floor_null_products(x: torch.Tensor, y: torch.Tensor, permutations: int) -> None:
    """What every permutation must redo, in the cheaper space: the cross product xcᵀ·P·yc
    (N·Dx·Dy), or, while the Grams fit and N < Dx·Dy, ⟨K, P L Pᵀ⟩ from permuted Grams (N²)."""
    from vilalign.analysis.measures import budget

    n = x.shape[0]
    g = torch.Generator().manual_seed(0)
    if budget.dense_fits(n) and n < x.shape[1] * y.shape[1]:
        k, l = (v.double() @ v.double().T for v in (x, y))
        for _ in range(permutations):
            perm = torch.randperm(n, generator=g)
            _ = torch.dot(k.reshape(-1), l[perm][:, perm].reshape(-1))
        return
    step = _pass_rows((x.shape[1] + y.shape[1]) * 16, n)
    for _ in range(permutations):
        perm = torch.randperm(n, generator=g)
        for a in range(0, n, step):
            _ = x[a : a + step].double().T @ y[perm[a : a + step]].double()


#: family -> (measures, floor); a null family's measure gets a permutation test.
FAMILIES: dict[str, tuple[list[str], Callable[..., None]]] = {
    "linear": (["cka_linear", "cka_unbiased"], floor_linear),
    "minibatch": (["cka_minibatch"], floor_minibatches),
    "cca": (["cca", "cca_squared", "svcca", "pwcca", "procrustes"], floor_products),
    "knn": (["mutual_knn", "knn_jaccard", "knn_rank", "cycle_knn", "cknna"], floor_neighbours),
    "rbf": (["cka_rbf"], floor_distances),
    "rsa": (["rsa"], floor_grams_of_rows(64)),
    "wasserstein": (["wasserstein"], floor_grams_of_rows(48)),
    "cosine": (["cosine"], floor_rows),
    "null_unbiased": (["cka_unbiased"], floor_null_products),
    "null_knn": (["mutual_knn"], lambda x, y, permutations: floor_neighbours(x, y)),
}


def write_layers(directory: Path, layers: int, n: int, dim: int, seed: int = 0) -> None:
    """The layers of :func:`make_layers`, one at a time, into ``.npy`` files (as collection
    spills them), so N = 100,000 × 8 layers never sits in memory at once."""
    from vilalign.analysis.store import DiskRows

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "done.json").exists():
        return
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    for layer in range(layers):
        share = (layer + 1) / (layers + 1)
        for side in ("x", "y"):
            mix = torch.randn(64, dim, generator=g) / 8
            rows = DiskRows.create(directory / f"{layer}_{side}.npy", (n, dim), "float32")
            for a in range(0, n, 10_000):
                noise = torch.randn(min(n, a + 10_000) - a, dim, generator=g)
                rows.write(a, (share * z[a : a + 10_000] @ mix + (1 - share) * noise + 0.5).numpy())
    (directory / "done.json").write_text(json.dumps({"layers": layers, "n": n, "dim": dim}))


def _layer(directory: Path, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's pair, read whole in float32 as the alignment table reads it."""
    return tuple(torch.from_numpy(np.load(directory / f"{layer}_{s}.npy")) for s in "xy")


def child(args: argparse.Namespace) -> None:
    """One family over the layers in a fresh process, each layer's floor timed just before
    it (side by side: a shared machine's load drifts); peak memory is the process's."""
    import resource

    from vilalign.analysis import measures as M

    logging.getLogger("vilalign").setLevel(logging.ERROR)
    if ":" in args.child:  # platonic-rep against ours, on its inputs
        return child_platonic(args)
    names, floor = FAMILIES[args.child]
    null = args.child.startswith("null_")
    rows, seconds, floor_seconds = [], 0.0, 0.0
    warm = make_layers(1, 60, 8)[0]  # lazy imports and first-call costs, outside the timing
    floor(*warm, 2) if null else floor(*warm)
    _ours(names, null, 0, *warm, 2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB, imports
    with M.settings(memory_gb=args.memory_gb):
        for layer in range(args.layers):
            x, y = _layer(args.workdir, layer)
            start = time.perf_counter()
            floor(x, y, args.permutations) if null else floor(x, y)
            floor_seconds += time.perf_counter() - start
            start = time.perf_counter()
            rows.append(_ours(names, null, layer, x, y, args.permutations))
            seconds += time.perf_counter() - start
            del x, y
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    out = {"seconds": seconds, "floor_seconds": floor_seconds, "peak_gb": peak, "base_gb": base,
           "rows": min(rows)}  # fmt: skip
    print(json.dumps(out))


def _ours(names: list[str], null: bool, layer: int, x, y, permutations: int) -> int:
    """The family on one layer (its null, for a null family); the fewest rows used."""
    from vilalign.analysis import measures as M
    from vilalign.analysis import stats as S

    vx, vy = M.View(x, f"{layer}/x"), M.View(y, f"{layer}/y")
    if null:
        S.permutation_test(names[0], vx, vy, n_permutations=permutations, seed=0)
        return x.shape[0]
    return min(r.rows for r in M.measure_results(vx, vy, names).values())


def child_platonic(args: argparse.Namespace) -> None:
    """``--child platonic:<ours>`` or ``--child ours:<ours>``: one measure on every layer's
    unit float32 rows (what platonic-rep's measure_alignment.py feeds its metrics)."""
    import resource

    from vilalign.analysis import measures as M

    who, ours = args.child.split(":")
    theirs, kw = PLATONIC[ours]
    ref = load_module(args.platonic_rep / "metrics.py", "platonic_metrics").AlignmentMetrics
    elapsed = 0.0
    warm = [F.normalize(v, dim=-1) for v in make_layers(1, 60, 8)[0]]
    getattr(ref, theirs)(*warm, **kw), M.compute_measures(*warm, [ours])  # first-call costs
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for layer in range(args.layers):
        x, y = (F.normalize(v, dim=-1) for v in _layer(args.workdir, layer))
        start = time.perf_counter()
        if who == "platonic":
            getattr(ref, theirs)(x, y, **kw)
        else:
            with M.settings(memory_gb=args.memory_gb):
                M.compute_measures(x, y, [ours])
        elapsed += time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"seconds": elapsed, "peak_gb": peak, "base_gb": base, "rows": 0}))


def compare_platonic_at(args: argparse.Namespace, n: int, directory: Path) -> None:
    """platonic-rep's metrics beside ours at this N, where its N×N matrices fit."""
    need = 4 * 4 * n * n / 1e9  # its float32 N×N similarity and mask matrices
    for ours in PLATONIC:
        if need > 16:
            print(f"{n:7d} {'platonic ' + ours:24s} cannot run: its N×N matrices need "
                  f"~{need:.0f} GB")  # fmt: skip
            continue
        theirs = _run_child(args, f"platonic:{ours}", directory, 1)
        mine = _run_child(args, f"ours:{ours}", directory, 1)
        if "error" in theirs or "error" in mine:
            print(f"{n:7d} {'platonic ' + ours:24s} {theirs.get('error') or mine.get('error')}")
            continue
        print(f"{n:7d} {'platonic ' + ours:24s}{theirs['seconds']:9.2f}{theirs['peak_gb']:9.2f}"
              f"{mine['seconds']:9.2f}{mine['peak_gb']:9.2f}"
              f"{mine['seconds'] / theirs['seconds']:9.2f}", flush=True)  # fmt: skip


def _run_child(args: argparse.Namespace, family: str, directory: Path, layers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", family, "--workdir", str(directory),
           "--layers", str(layers), "--permutations", str(args.permutations)]  # fmt: skip
    cmd += ["--memory-gb", str(args.memory_gb)] if args.memory_gb else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--platonic-rep", str(args.platonic_rep)] if args.platonic_rep else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(args: argparse.Namespace) -> None:
    """The scaling table: N × family → time, peak memory, floor, ratio (one line each,
    printed as it is measured)."""
    import tempfile

    sizes = [int(v) for v in args.sizes.split(",")]
    families = [f for f in args.families.split(",") if f]
    fewer = dict(kv.split("=") for kv in args.layers_for.split(",") if kv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="vilalign-scaling-"))
    budget = args.memory_gb or "default"
    print(f"D={args.dim}, up to {args.layers} layers, memory_gb={budget}, "
          f"{torch.get_num_threads()} torch threads; peak: resident set of a fresh process "
          "(base: after its imports); rows: a subsample's size")  # fmt: skip
    head = f"{'N':>7s} {'family':14s}{'layers':>7s}{'s':>9s}{'s/layer':>9s}{'peak GB':>9s}"
    print(head + f"{'base GB':>9s}{'floor s':>9s}{'x floor':>9s}  rows", flush=True)
    for n in sizes:
        directory = root / f"n{n}_d{args.dim}"
        write_layers(directory, args.layers, n, args.dim)
        for family in families:
            layers = min(args.layers, int(fewer.get(family, args.layers)))
            ours = _run_child(args, family, directory, layers)
            if "error" in ours:
                print(f"{n:7d} {family:14s}{layers:7d}  {ours['error']}")
                continue
            ratio = ours["seconds"] / ours["floor_seconds"]
            rows = f"  {ours['rows']}" if ours["rows"] and ours["rows"] < n else ""
            print(f"{n:7d} {family:14s}{layers:7d}{ours['seconds']:9.2f}"
                  f"{ours['seconds'] / layers:9.2f}{ours['peak_gb']:9.2f}{ours['base_gb']:9.2f}"
                  f"{ours['floor_seconds']:9.2f}"
                  f"{ratio:9.2f}{rows}", flush=True)  # fmt: skip
        if args.platonic_rep is not None:
            print(f"{'N':>7s} {'1 layer, unit float32 rows':24s}{'ref s':>9s}{'ref GB':>9s}"
                  f"{'ours s':>9s}{'ours GB':>9s}{'ours/ref':>9s}")  # fmt: skip
            compare_platonic_at(args, n, directory)


if __name__ == "__main__":
    main()

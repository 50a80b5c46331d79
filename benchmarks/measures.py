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
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from vilalign.analysis import measures as M

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--platonic-rep", type=Path, default=None)
    parser.add_argument("--kornblith", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads")
    args = parser.parse_args(argv)
    with blas_threads(args.threads):
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


if __name__ == "__main__":
    main()

"""Alignment measures between two representations of the same N samples, one registry.

Every pooled measure compares ``x`` (N×D1) and ``y`` (N×D2), whose rows are paired (row i
of both is sample i), and returns a float; token-level measures compare the text tokens
and image patches of the same samples. Measures run on torch tensors on any device and
compute in float64: the unbiased HSIC estimator and the CCA whitening subtract large,
nearly equal terms, where float32 loses the answer.

Work is shared: a :class:`View` caches what one representation needs (Gram matrix,
centred Gram, cosine Gram, k-NN lists, feature covariance and its factors) and a
:class:`Pair` caches cross terms, so :func:`compute_measures` — or a layer×layer grid
that reuses the same views — computes each Gram matrix and neighbour list once.

Degenerate input never turns into a silent NaN: N too small, all rows equal, zero rows
where a cosine is needed, k ≥ N, NaN/inf values, or mismatched shapes raise a
``ValueError`` that names the problem.

The package, by family (each module registers its own measures when imported here):

* :mod:`.views` — :class:`View`, :class:`Pair` and their caches; :mod:`.linalg` — the
  numerical primitives they share; :mod:`.topk` — certified blocked k-NN lists;
* :mod:`.budget` — the memory budget (``settings(memory_gb=...)``) every measure reads to
  choose between its dense (N×N) and blocked / feature-space forms (see docs/scale.md);
* :mod:`.registry` — :class:`Measure`, :func:`register`, :func:`get_measure`,
  :func:`measures_for`, :func:`compute_measures`;
* :mod:`.cka`, :mod:`.cca`, :mod:`.neighbours`, :mod:`.distances` — pooled measures;
* :mod:`.tokens` — token-level measures (``level=TOKENS``).

To add a measure, write one function in the family module it belongs to::

    @register("my_measure", resample="subsample")  # metadata: see Measure
    def my_measure(p: Pair, k: int = 10) -> float:
        '''What it measures (this docstring is the measure's doc).'''
        return ...

The analysis, the statistics, the experiment and run files read the registry: nothing
else changes.
"""

from __future__ import annotations

# isort: off
# Importing a family module registers its measures; this order is the order of MEASURES
# (and of compute_measures' default).
from vilalign.analysis.measures.cka import (
    MinibatchCKA,
    cka_linear,
    cka_minibatch,
    cka_rbf,
    cka_unbiased,
    minibatch_cka,
)
from vilalign.analysis.measures.cca import cca, cca_squared, procrustes, pwcca, svcca
from vilalign.analysis.measures.neighbours import (
    cknna,
    cycle_knn,
    knn_jaccard,
    knn_rank,
    mutual_knn,
)
from vilalign.analysis.measures.distances import paired_cosine, rsa, wasserstein
from vilalign.analysis.measures.tokens import (
    maxsim_patch_to_text,
    maxsim_text_to_patch,
    token_maxsim,
)

# isort: on
from vilalign.analysis.measures.budget import settings
from vilalign.analysis.measures.registry import (
    LEVELS,
    MEASURES,
    POOLED,
    REGISTRY,
    TOKEN_MEASURES,
    TOKENS,
    Measure,
    Result,
    compute_measures,
    get_measure,
    measure_results,
    measures_for,
    register,
)
from vilalign.analysis.measures.views import Pair, View

__all__ = [
    "LEVELS",
    "MEASURES",
    "POOLED",
    "REGISTRY",
    "TOKENS",
    "TOKEN_MEASURES",
    "Measure",
    "MinibatchCKA",
    "Pair",
    "Result",
    "View",
    "cca",
    "cca_squared",
    "cka_linear",
    "cka_minibatch",
    "cka_rbf",
    "cka_unbiased",
    "cknna",
    "compute_measures",
    "cycle_knn",
    "get_measure",
    "knn_jaccard",
    "knn_rank",
    "maxsim_patch_to_text",
    "maxsim_text_to_patch",
    "measure_results",
    "measures_for",
    "minibatch_cka",
    "mutual_knn",
    "paired_cosine",
    "procrustes",
    "pwcca",
    "register",
    "rsa",
    "settings",
    "svcca",
    "token_maxsim",
    "wasserstein",
]

"""Defaults of the analysis that ``vilalign --help`` shows.

Plain data without imports, so that the help of ``vilalign analyse`` can show the
library's own default without loading torch; the library reads them from here too
(one owner).
"""

from __future__ import annotations

#: What ``vilalign analyse`` (and an alignment spec that names none) measures: two
#: measures a methods reviewer accepts at N < D — unbiased CKA (its HSIC estimator has
#: no small-N upward bias; unrelated features score ~0) and mutual k-NN (chance k/(N−1),
#: read against its permutation null) — each with its null and interval.
DEFAULT_MEASURES = ("cka_unbiased", "mutual_knn")

#: Permutations of the null behind each p-value, chance level and null band: the smallest
#: p-value is 1/(B+1) ≈ 0.005, and the 5–95 % band rests on ~10 draws per tail.
DEFAULT_PERMUTATIONS = 200

#: Half-samples behind each interval (delete-d jackknife): the interval's half-width is
#: t·s with s estimated from them, to within ~7 % at 100.
DEFAULT_RESAMPLES = 100

#: Samples ``vilalign analyse`` collects by default.
DEFAULT_SAMPLES = 1000

#: Memory the alignment measures may use for their working blocks, in GB (``--memory-gb``,
#: ``analysis.memory_gb``): sized for a laptop. Gram-matrix (N×N) forms are used only
#: while they fit in it; above that every measure switches to blocked or feature-space
#: forms whose memory grows linearly in N (see docs/scale.md).
DEFAULT_MEMORY_GB = 2.0

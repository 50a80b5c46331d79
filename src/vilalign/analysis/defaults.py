"""Defaults of the analysis that ``vilalign --help`` shows.

Plain data without imports, so that the help of ``vilalign analyse`` can show the
library's own default without loading torch; the library reads them from here too
(one owner).
"""

from __future__ import annotations

#: What ``vilalign analyse`` (and an alignment spec that names none) measures.
DEFAULT_MEASURES = (
    "cosine",
    "cka_linear",
    "cka_unbiased",
    "svcca",
    "mutual_knn",
    "cknna",
    "knn_jaccard",
)

#: Memory the alignment measures may use for their working blocks, in GB (``--memory-gb``,
#: ``analysis.memory_gb``): sized for a laptop. Gram-matrix (N×N) forms are used only
#: while they fit in it; above that every measure switches to blocked or feature-space
#: forms whose memory grows linearly in N (see docs/scale.md).
DEFAULT_MEMORY_GB = 2.0

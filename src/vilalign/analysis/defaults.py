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

"""Suite-wide settings: offline, a per-session image cache, quiet progress bars."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session", autouse=True)
def _session_image_cache(tmp_path_factory):
    """Tests never write into the user's ~/.cache; one cache is shared by the session."""
    previous = os.environ.get("VILALIGN_CACHE")
    os.environ["VILALIGN_CACHE"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if previous is None:
        os.environ.pop("VILALIGN_CACHE", None)
    else:
        os.environ["VILALIGN_CACHE"] = previous

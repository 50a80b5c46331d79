"""Suite-wide settings: offline, a per-session image cache, quiet progress bars."""

from __future__ import annotations

import os

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-tensor tests: intra-op threads only spin
    against the other processes on a shared 2-core CPU (measured 12-40x slower). Module
    scope, so it is undone before other modules run; folders opt in with an autouse
    fixture that asks for it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Analysis tests use small tensors: one torch thread for every module here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield

"""Tiny published-model folders, built once per session and loaded like a user's hub name."""

from __future__ import annotations

import pytest
import torch

from tests.adapters import tiny
from vilalign.data.types import Sample


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("hf-models"))


@pytest.fixture(scope="session")
def region_file(tmp_path_factory):
    ids = [f"s{i}" for i in range(len(tiny.TEXTS))]
    # the third sample has 3 of 5 regions: batches are padded and masked
    counts = [tiny.REGIONS, tiny.REGIONS, 3, tiny.REGIONS, 4, tiny.REGIONS]
    return tiny.write_regions(tmp_path_factory.mktemp("regions") / "regions.npz", ids, 0, counts)


@pytest.fixture(scope="session")
def adapters(folders, region_file):
    from vilalign.adapters import load_hf_model

    torch.manual_seed(0)
    return {
        name: load_hf_model(
            folder, regions=region_file if name in ("lxmert", "visual_bert") else None
        )
        for name, folder in folders.items()
    }


def make_samples(sizes: list[tuple[int, int]] | None = None) -> list[Sample]:
    """Raw-image samples (what the readers give a published model), ids s0, s1, ..."""
    g = torch.Generator().manual_seed(1)
    sizes = sizes or [(48, 64), (64, 64), (40, 56), (64, 48), (64, 64), (56, 40)]
    return [
        Sample(
            image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            text=text,
            label=None,
            id=f"s{i}",
        )
        for i, (text, (h, w)) in enumerate(zip(tiny.TEXTS, sizes, strict=True))
    ]


@pytest.fixture(scope="session")
def samples():
    return make_samples()

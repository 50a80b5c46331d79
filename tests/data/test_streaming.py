"""Streaming shards at scale: fsspec URLs, and exactly-once epochs over ranks x workers."""

from __future__ import annotations

import io
from collections import Counter

import fsspec
import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from vilalign.data import Collator
from vilalign.data.captions import CaptionShards, expand_shards

from .helpers import write_jpeg_bytes


def _shard_bytes(shard: int, per_shard: int) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:
        for i in range(per_shard):
            key = f"{shard:05d}{i:04d}"
            sink.write({"__key__": key, "jpg": write_jpeg_bytes(key), "txt": f"caption {key}"})
    return buf.getvalue()


@pytest.fixture
def memory_shards():
    """Shards on fsspec's in-memory file system: a stand-in for s3:// or gs://."""
    fs = fsspec.filesystem("memory")
    for s in range(8):
        with fs.open(f"/cc-test/{s:05d}.tar", "wb") as f:
            f.write(_shard_bytes(s, per_shard=3))
    yield [f"{s:05d}{i:04d}" for s in range(8) for i in range(3)]
    fs.rm("/cc-test", recursive=True)


def test_shards_stream_from_an_fsspec_url_by_braces_or_glob(memory_shards, eval_transform):
    braces = expand_shards("memory://cc-test/{00000..00007}.tar")
    assert expand_shards("memory://cc-test/*.tar") == braces
    assert len(braces) == 8
    ds = CaptionShards("memory://cc-test/*.tar", eval_transform, shuffle_buffer=5)
    samples = list(ds)
    assert sorted(s.id for s in samples) == memory_shards
    assert all(s.text == f"caption {s.id}" for s in samples)


def test_two_ranks_two_workers_see_every_sample_exactly_once_per_epoch(
    memory_shards, eval_transform, tokenizer
):
    orders = []
    for epoch in range(2):
        seen: list[str] = []
        for rank in range(2):
            ds = CaptionShards(
                "memory://cc-test/{00000..00007}.tar",
                eval_transform,
                shuffle_buffer=4,
                seed=7,
                rank=rank,
                world_size=2,
            )
            ds.set_epoch(epoch)
            loader = DataLoader(
                ds, batch_size=2, num_workers=2, collate_fn=Collator(tokenizer, max_length=8)
            )
            seen += [i for batch in loader for i in batch.ids]
        counts = Counter(seen)
        assert sorted(counts) == memory_shards and set(counts.values()) == {1}, epoch
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shard assignment and order each epoch

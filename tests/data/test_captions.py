"""Caption data: the shard reader (shuffle, rank/worker split), caption folders."""

from __future__ import annotations

import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from vilalign.data import BadImageError, Collator, DataConfig, build_dataset
from vilalign.data.captions import CaptionShards, expand_shards

from .helpers import assert_matches, write_image, write_jpeg_bytes


def write_shards(folder, shards=4, per_shard=5, bad=()):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                image = b"<html>no</html>" if key in bad else write_jpeg_bytes(f"cap{key}")
                sink.write({"__key__": key, "jpg": image, "txt": f"caption {key}"})
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def test_stream_pairs_images_with_their_captions(tmp_path, eval_transform, data_config):
    pattern = write_shards(tmp_path / "s")
    assert len(expand_shards(pattern)) == 4
    ds = CaptionShards(pattern, eval_transform, shuffle_buffer=8, seed=1)
    samples = list(ds)
    assert sorted(s.id for s in samples) == [f"{s:05d}{i:04d}" for s in range(4) for i in range(5)]
    assert [s.id for s in samples] != sorted(s.id for s in samples)  # shuffled
    for s in samples:
        assert s.text == f"caption {s.id}" and s.label is None
        assert_matches(s.image, f"cap{s.id}", data_config)
    ds.set_epoch(1)
    assert [s.id for s in ds] != [s.id for s in samples]  # a new order each epoch


def test_split_across_ranks_and_workers(tmp_path, eval_transform, tokenizer):
    pattern = write_shards(tmp_path / "s", shards=6, per_shard=3)
    seen = []
    for rank in range(2):
        ds = CaptionShards(pattern, eval_transform, shuffle_buffer=4, rank=rank, world_size=2)
        parts = [set(ds.shards_for(rank, 2, w, 2)) for w in range(2)]
        assert not parts[0] & parts[1]
        loader = DataLoader(
            ds, batch_size=4, num_workers=2, collate_fn=Collator(tokenizer, max_length=8)
        )
        seen.append([i for batch in loader for i in batch.ids])
    assert not set(seen[0]) & set(seen[1])  # ranks read disjoint shards
    everything = [f"{s:05d}{i:04d}" for s in range(6) for i in range(3)]
    assert sorted(seen[0] + seen[1]) == everything


def test_epoch_length_equalises_ranks(tmp_path, eval_transform):
    pattern = write_shards(tmp_path / "s", shards=3, per_shard=4)  # 2 shards vs 1 shard
    lengths = [
        len(list(CaptionShards(pattern, eval_transform, rank=r, world_size=2, epoch_length=7)))
        for r in range(2)
    ]
    assert lengths == [7, 7]


def test_bad_image_in_shard(tmp_path, eval_transform):
    pattern = write_shards(tmp_path / "s", shards=1, per_shard=3, bad={"000000001"})
    ds = CaptionShards(pattern, eval_transform, on_bad_image="skip")
    assert len(list(ds)) == 2 and ds.bad_images.count == 1
    with pytest.raises(BadImageError, match=r"00000\.tar:000000001: not an image"):
        list(CaptionShards(pattern, eval_transform))


def test_caption_folder(tmp_path, data_config):
    root = tmp_path / "folder"
    for name in ("a/one", "a/two", "three"):
        write_image(root / f"{name}.jpg", f"folder{name}")
        (root / f"{name}.txt").write_text(f"a caption for {name}\n")
    write_image(root / "orphan.png", "orphan")  # no caption: not a sample
    cfg = DataConfig(
        name="captions_folder",
        root=str(root),
        cache={"dir": str(tmp_path / "c"), "progress": False},
    )
    from vilalign.data import build_image_transform

    ds = build_dataset(cfg, "train", build_image_transform(data_config, cfg, "train"))
    assert [s.id for s in ds] == ["a/one", "a/two", "three"]
    for s in ds:
        assert s.text == f"a caption for {s.id}"
        assert_matches(s.image, f"folder{s.id}", data_config)  # (random crops keep the colour)


def test_rank_and_world_default_to_torch_distributed(tmp_path, eval_transform, monkeypatch):
    import torch.distributed as dist

    pattern = write_shards(tmp_path / "s", shards=4, per_shard=2)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ds = CaptionShards(pattern, eval_transform, shuffle_buffer=0)
    got = {s.id[:5] for s in ds}  # shard number prefixes the key
    assert got == {p.rsplit("/", 1)[1][:5] for p in ds.shards_for(1, 2, 0, 1)} and len(got) == 2

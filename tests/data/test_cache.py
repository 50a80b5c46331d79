"""The image cache: rows equal a fresh decode, reused when nothing changed, rebuilt otherwise."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vilalign.data import BadImageError, build_transform, load_image, open_or_build

from .helpers import write_image


@pytest.fixture
def images(tmp_path):
    return [str(write_image(tmp_path / "src" / f"{i}.png", f"img{i}")) for i in range(5)]


def build(paths, transform, tmp_path, **kw):
    return open_or_build("t", paths, transform, tmp_path / "cache", progress=False, **kw)


def test_rows_equal_prepared_images(images, eval_transform, tmp_path):
    cache = build(images, eval_transform, tmp_path)
    assert len(cache) == 5
    for p in images:
        np.testing.assert_array_equal(
            cache.read(cache.row(p)), eval_transform.prepare(load_image(p))
        )
    rows = [cache.row(p) for p in images[::-1]]
    assert cache.read(rows).shape == (5, 3, *eval_transform.size)


def test_reused_then_rebuilt_on_change(images, eval_transform, data_config, tmp_path):
    first = build(images, eval_transform, tmp_path)
    again = build(images, eval_transform, tmp_path)
    assert again.folder == first.folder
    # a changed source file (new size and mtime) selects a new cache
    write_image(tmp_path / "src" / "2.png", "changed", size=(60, 60))
    os.utime(images[2], ns=(1, 1))
    changed = build(images, eval_transform, tmp_path)
    assert changed.folder != first.folder
    np.testing.assert_array_equal(
        changed.read(changed.row(images[2])), eval_transform.prepare(load_image(images[2]))
    )
    # so does a different preprocessing size
    small = build_transform({**data_config, "input_size": (3, 16, 16)})
    resized = build(images, small, tmp_path)
    assert resized.folder not in (first.folder, changed.folder)
    assert resized.read(0).shape == (3, 16, 16)


def test_parallel_build_equals_inline(images, eval_transform, tmp_path):
    inline = build(images, eval_transform, tmp_path / "a")
    pooled = build(images, eval_transform, tmp_path / "b", workers=2)
    np.testing.assert_array_equal(inline.read(list(range(5))), pooled.read(list(range(5))))


def test_bad_image_skipped_or_named(images, eval_transform, tmp_path):
    bad = tmp_path / "src" / "empty.png"
    bad.write_bytes(b"")
    paths = [*images, str(bad)]
    with pytest.raises(BadImageError, match=r"empty\.png.*0 bytes"):
        build(paths, eval_transform, tmp_path)
    cache = build(paths, eval_transform, tmp_path, on_bad_image="skip")
    assert len(cache) == 5 and str(bad) not in cache
    assert cache.bad == [(str(bad), "empty file (0 bytes)")]
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # the failed build left nothing


def _build_in_child(args):
    paths, transform, folder = args
    return str(open_or_build("t", paths, transform, folder, progress=False).folder)


def test_concurrent_builders_share_one_cache(images, eval_transform, tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        folders = pool.map(_build_in_child, [(images, eval_transform, tmp_path / "c")] * 2)
    assert folders[0] == folders[1]
    assert len(build(images, eval_transform, tmp_path / "x")) == 5
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")) == [
        folders[0].rsplit("/", 1)[1]
    ]


def test_caches_are_listed_by_last_use_and_pruned(images, eval_transform, tmp_path, capsys):
    import json
    import time

    from vilalign.cli import main
    from vilalign.data import list_caches

    root = tmp_path / "cache"
    kept = build(images, eval_transform, tmp_path)
    unused = build(images[:2], eval_transform, tmp_path)
    month_ago = time.time() - 30 * 86400
    os.utime(unused.folder / "index.json", (month_ago, month_ago))
    old = root / "t-oldformat"
    old.mkdir()
    (old / "index.json").write_text(json.dumps({"version": 1, "shape": [2, 8, 8, 3], "keys": []}))
    (root / "t-crashed.tmp-123").mkdir()
    for folder in (old, root / "t-crashed.tmp-123"):
        os.utime(folder / "index.json" if folder == old else folder, (month_ago + 1,) * 2)
    os.utime(kept.folder / "index.json", (month_ago + 2,) * 2)
    build(images, eval_transform, tmp_path)  # a use: now the most recent

    entries = list_caches(root)
    assert entries[0].folder == unused.folder
    assert entries[-1].folder == kept.folder
    states = {e.name: e.state for e in entries}
    assert states == {
        kept.folder.name: "ready", unused.folder.name: "ready",
        "t-oldformat": "old", "t-crashed.tmp-123": "incomplete",
    }  # fmt: skip
    ready = {e.folder: e for e in entries if e.state == "ready"}
    assert ready[kept.folder].images == 5 and ready[kept.folder].shape == (3, *eval_transform.size)

    assert main(["cache", "--dir", str(root)]) == 0
    assert "4 caches" in capsys.readouterr().out
    assert main(["cache", "--dir", str(root), "--older-than", "7"]) == 0
    assert "deleted 3 of 4 caches" in capsys.readouterr().out
    assert [e.folder for e in list_caches(root)] == [kept.folder]
    assert main(["cache", "--dir", str(root), "--clear"]) == 0
    assert list_caches(root) == [] and not list(root.glob("*.lock"))

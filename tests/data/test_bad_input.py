"""Bad input: each gives the promised error naming the file, or the promised skip + count."""

from __future__ import annotations

import json
import logging

import pytest

from vilalign.data import BadImageError, DataConfig, DataFormatError, build_dataset
from vilalign.data import build_image_transform as transform_for

from . import formats


def corrupt(root):
    """Four of the eleven memes broken, one way each."""
    img = root / "img"
    data = (img / "42001.png").read_bytes()
    (img / "42001.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    (img / "42002.png").write_bytes(b"")  # zero bytes
    (img / "42003.png").unlink()  # missing
    (img / "42004.png").write_text("<!DOCTYPE html><html><body>404</body></html>")  # HTML
    return {
        "42001": "cannot decode",
        "42002": "0 bytes",
        "42003": "not found",
        "42004": "not an image",
    }


def hm(root, tmp_path, policy, cache=True, split="train"):
    cfg = DataConfig(
        name="hateful_memes",
        root=str(root),
        on_bad_image=policy,
        cache={"enabled": cache, "dir": str(tmp_path / "c"), "progress": False},
    )
    return build_dataset(
        cfg,
        split,
        transform_for(
            {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}, cfg, split
        ),
    )


@pytest.fixture
def broken(tmp_path):
    root = formats.hateful_memes(tmp_path / "hm")
    return root, corrupt(root)


@pytest.mark.parametrize("cache", [True, False])
def test_skip_counts_and_reports(broken, tmp_path, cache, caplog):
    root, bad = broken
    with caplog.at_level(logging.WARNING):
        ds = hm(root, tmp_path, "skip", cache)
    assert len(ds) == 0 and ds.skipped == 4  # the four train memes are exactly the bad ones
    reasons = {p.split("/")[-1][:5]: r for p, r in ds.bad_images.entries}
    assert set(reasons) == set(bad) and all(bad[k] in reasons[k] for k in bad)
    assert "skipped 4 bad image(s)" in caplog.text
    report = ds.loading_report()
    assert report["skipped"] == 4 and len(report["bad_images"]) == 4
    assert len(hm(root, tmp_path, "skip", cache, split="dev_seen")) == 2  # others unaffected


@pytest.mark.parametrize("name", ["42001", "42002", "42004"])
@pytest.mark.parametrize("cache", [True, False])
def test_error_names_the_file(broken, tmp_path, name, cache):
    root, bad = broken
    (root / "img" / "42003.png").write_bytes((root / "img" / "42005.png").read_bytes())
    for other in set(bad) - {name, "42003"}:  # leave only one bad file
        (root / "img" / f"{other}.png").write_bytes((root / "img" / "42005.png").read_bytes())
    with pytest.raises(BadImageError, match=rf"{name}\.png.*{bad[name]}"):
        ds = hm(root, tmp_path, "error", cache)
        [ds[i] for i in range(len(ds))]  # without a cache, the decode error comes on read


def test_missing_file_fails_at_construction(broken, tmp_path):
    root, _ = broken
    with pytest.raises(BadImageError, match=r"42003\.png: file not found"):
        hm(root, tmp_path, "error", cache=False)


def test_broken_json_line_names_file_and_line(tmp_path):
    root = formats.hateful_memes(tmp_path / "hm")
    lines = (root / "dev_seen.jsonl").read_text().splitlines()
    lines.insert(1, '{"id": 1, "img": "img/1.png", "text": ')
    (root / "dev_seen.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=r"dev_seen\.jsonl:2: not valid JSON"):
        hm(root, tmp_path, "error", split="dev_seen")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"label": 3}, r"train\.jsonl:1: unknown label 3"),
        ({"label": None}, r"train\.jsonl:1: missing field 'label'"),
        ({"img": None}, r"train\.jsonl:1: missing field 'img'"),
    ],
)
def test_bad_field_named(tmp_path, edit, message):
    root = formats.hateful_memes(tmp_path / "hm")
    lines = (root / "train.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **edit})
    (root / "train.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=message):
        hm(root, tmp_path, "error")


def test_html_as_jpeg_in_mmimdb(tmp_path):
    root = formats.mmimdb(tmp_path / "mm")
    (root / "dataset" / "0000002.jpeg").write_text("<html><head><title>Not found</title></html>")
    cfg = DataConfig(
        name="mmimdb",
        root=str(root),
        on_bad_image="skip",
        cache={"dir": str(tmp_path / "c"), "progress": False},
    )
    ds = build_dataset(
        cfg,
        "train",
        transform_for(
            {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}, cfg, "train"
        ),
    )
    assert [s.id for s in ds] == ["0000001", "0000003"] and ds.skipped == 1
    assert "looks like HTML" in ds.bad_images.entries[0][1]


def test_broken_split_json_named(tmp_path):
    root = formats.mmimdb(tmp_path / "mm")
    (root / "split.json").write_text('{"train": [1, 2,\n  }')
    cfg = DataConfig(name="mmimdb", root=str(root), cache={"enabled": False})
    with pytest.raises(DataFormatError, match=r"split\.json:2: not valid JSON"):
        build_dataset(
            cfg,
            "train",
            transform_for(
                {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}, cfg, "train"
            ),
        )


def test_decode_errors_are_bad_image_errors(tmp_path, monkeypatch):
    from PIL import Image

    from vilalign.data import load_image

    from .helpers import write_image

    path = write_image(tmp_path / "big.png", "big", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2*100: a "bomb"
    with pytest.raises(BadImageError, match=r"big\.png: image too large"):
        load_image(path)

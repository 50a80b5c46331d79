"""Karpathy-split caption files (MS-COCO, Flickr30k) on fixture copies of the real format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vilalign.config import ConfigError
from vilalign.data import (
    BadImageError,
    DataConfig,
    DataFormatError,
    build_dataset,
    build_image_transform,
    build_transform,
)
from vilalign.data.karpathy import KarpathyCaptions

from .helpers import assert_matches, write_image

# imgid → split; image 5 has 6 captions (a few real COCO images do)
COCO = {0: "train", 1: "train", 2: "restval", 3: "restval", 4: "val", 5: "test", 6: "test"}
FLICKR = {10: "train", 11: "train", 12: "train", 13: "val", 14: "test", 15: "test"}


def caption(imgid: int, j: int) -> str:
    return f"caption {j} of image {imgid}"


def _entry(dataset: str, imgid: int, split: str, filename: str, n: int = 5) -> dict:
    sents = [
        {
            "raw": caption(imgid, j) + (" \n" if j == 0 else ""),
            "tokens": caption(imgid, j).split(),
            "imgid": imgid,
            "sentid": 100 * imgid + j,
        }
        for j in range(n)
    ]
    return {
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentids": [s["sentid"] for s in sents],
        "sentences": sents,
    }


def write_coco(root: Path) -> Path:
    """``dataset_coco.json`` + ``train2014/`` and ``val2014/`` COCO-named images."""
    images = []
    for imgid, split in COCO.items():
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{imgid:012d}.jpg"
        write_image(root / folder / name, f"coco{imgid}")
        entry = _entry("coco", imgid, split, name, n=6 if imgid == 5 else 5)
        images.append({"filepath": folder, **entry, "cocoid": 1000 + imgid})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def write_flickr(root: Path, folder: str = "flickr30k-images") -> Path:
    """``dataset_flickr30k.json`` + images in ``root/<folder>`` (no ``filepath`` field)."""
    images = []
    for imgid, split in FLICKR.items():
        name = f"{1000092795 + imgid}.jpg"
        write_image(root / folder / name, f"flickr{imgid}")
        images.append(_entry("flickr30k", imgid, split, name))
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"images": images, "dataset": "flickr30k"})
    )
    return root


def load(name, root, split, data_config, tmp_path, cache=True, **kw):
    cfg = DataConfig(
        name=name,
        root=str(root),
        cache={"enabled": cache, "progress": False, "dir": str(tmp_path / "cache")},
        **kw,
    )
    return build_dataset(cfg, split, build_image_transform(data_config, cfg, split))


def check_samples(ds, key: str, data_config) -> None:
    """Every sample's text is its id's caption and its image is its id's image."""
    for s in ds:
        imgid, j = (int(p) for p in s.id.split("#"))
        assert s.text == caption(imgid, j) and s.label is None and s.image_id == str(imgid)
        assert_matches(s.image, f"{key}{imgid}", data_config)


def ids_of(split_map: dict[int, str], splits: set[str], n: int = 5) -> list[str]:
    return [f"{i}#{j}" for i, s in split_map.items() if s in splits for j in range(n)]


@pytest.mark.parametrize("cache", [True, False])
def test_coco_splits_with_restval_merged(tmp_path, data_config, cache):
    root = write_coco(tmp_path / "coco")
    for split, files in (("train", {"train", "restval"}), ("val", {"val"}), ("test", {"test"})):
        ds = load("coco_karpathy", root, split, data_config, tmp_path, cache)
        assert [s.id for s in ds] == ids_of(COCO, files)  # 5 captions per image, file order
        assert ds.images == [str(i) for i, s in COCO.items() if s in files]
        check_samples(ds, "coco", data_config)
    assert len(load("coco_karpathy", root, "train", data_config, tmp_path, cache)) == 4 * 5


def test_restval_kept_apart(tmp_path, data_config):
    root = write_coco(tmp_path / "coco")
    tf = build_transform(data_config, train=False)
    kw = {"merge_restval": False, "cache": None}
    train = KarpathyCaptions(root / "dataset_coco.json", root, "train", tf, **kw)
    restval = KarpathyCaptions(root / "dataset_coco.json", root, "restval", tf, **kw)
    assert train.images == ["0", "1"] and restval.images == ["2", "3"]
    check_samples(restval, "coco", data_config)


def test_fixed_caption_and_max_captions(tmp_path, data_config):
    root = write_coco(tmp_path / "coco")
    tf = build_transform(data_config, train=False)
    path = root / "dataset_coco.json"
    fixed = KarpathyCaptions(path, root, "test", tf, caption=2)
    assert [s.id for s in fixed] == ["5#2", "6#2"]  # one sample per image
    check_samples(fixed, "coco", data_config)
    every = KarpathyCaptions(path, root, "test", tf, max_captions=None)
    assert [s.id for s in every][:6] == [f"5#{j}" for j in range(6)] and len(every) == 11
    with pytest.raises(DataFormatError, match=r"images\[6\]: image 6 has 5 caption\(s\), no "):
        KarpathyCaptions(path, root, "test", tf, caption=5, max_captions=None)
    with pytest.raises(ValueError, match="beyond max_captions=5"):
        KarpathyCaptions(path, root, "test", tf, caption=5)


@pytest.mark.parametrize("folder", ["", "flickr30k-images"])
def test_flickr_both_layouts(tmp_path, data_config, folder):
    root = write_flickr(tmp_path / "f30k", folder)
    for split, files in (("train", {"train"}), ("val", {"val"}), ("test", {"test"})):
        ds = load("flickr30k_karpathy", root, split, data_config, tmp_path)
        assert [s.id for s in ds] == ids_of(FLICKR, files)
        check_samples(ds, "flickr", data_config)


def test_flickr_images_nowhere_names_both_paths(tmp_path, data_config):
    root = write_flickr(tmp_path / "f30k", "images")  # neither accepted layout
    with pytest.raises(DataFormatError, match=r"f30k/1000092809\.jpg nor .*f30k/flickr30k-images"):
        load("flickr30k_karpathy", root, "test", data_config, tmp_path)


def test_bad_images_follow_the_policy(tmp_path, data_config):
    root = write_coco(tmp_path / "coco")
    (root / "val2014" / "COCO_val2014_000000000005.jpg").unlink()
    (root / "val2014" / "COCO_val2014_000000000006.jpg").write_bytes(b"")
    ds = load("coco_karpathy", root, "test", data_config, tmp_path, on_bad_image="skip")
    assert len(ds) == 0 and ds.skipped == 2 * 5  # every caption of both images dropped
    with pytest.raises(BadImageError, match=r"COCO_val2014_000000000005\.jpg: file not found"):
        load("coco_karpathy", root, "test", data_config, tmp_path)


def test_unknown_split(tmp_path, data_config):
    root = write_coco(tmp_path / "coco")
    with pytest.raises(ConfigError, match="'restval' is not a split of coco_karpathy"):
        load("coco_karpathy", root, "restval", data_config, tmp_path)


def _break(root: Path, edit) -> None:
    path = root / "dataset_coco.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][5].pop("sentences"), r"images\[5\]: missing field 'sentences'"),
        (lambda d: d["images"][6].pop("filename"), r"images\[6\]: missing field 'filename'"),
        (lambda d: d["images"][5].pop("imgid"), r"images\[5\]: missing field 'imgid'"),
        (lambda d: d["images"][0].pop("split"), r"images\[0\]: missing field 'split'"),
        (
            lambda d: d["images"][6]["sentences"][3].pop("raw"),
            r"images\[6\]\.sentences\[3\]: missing field 'raw'",
        ),
        (lambda d: d["images"][6].update(sentences=[]), r"images\[6\]: field 'sentences' must"),
        (lambda d: d["images"][2].update(split="dev"), r"images\[2\]: field 'split' is 'dev'"),
        (lambda d: d["images"][6].update(imgid=5), r"field 'imgid' repeats \(5\)"),
        (lambda d: d.update(dataset="flickr30k"), r"field 'dataset' is 'flickr30k'"),
        (lambda d: d.pop("images"), r"missing field 'images'"),
    ],
)
def test_bad_json_names_file_and_field(tmp_path, data_config, edit, message):
    root = write_coco(tmp_path / "coco")
    _break(root, edit)
    with pytest.raises(DataFormatError, match=rf"dataset_coco\.json: .*{message}"):
        load("coco_karpathy", root, "test", data_config, tmp_path)


def test_malformed_or_missing_file(tmp_path, data_config):
    root = write_coco(tmp_path / "coco")
    (root / "dataset_coco.json").write_text('{"images": [\n{"filename": ')
    with pytest.raises(DataFormatError, match=r"dataset_coco\.json:2: not valid JSON"):
        load("coco_karpathy", root, "test", data_config, tmp_path)
    with pytest.raises(DataFormatError, match=r"dataset_flickr30k\.json: file not found"):
        load("flickr30k_karpathy", root, "test", data_config, tmp_path)

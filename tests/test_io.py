"""Atomic writes: whole or nothing, the user's umask, no leftovers; safe file names."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from vilalign.io import (
    atomic_dir,
    safe_name,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _writers(tmp_path: Path) -> dict[str, Path]:
    """One file per write form, as the toolkit's callers use them."""
    frame = pd.DataFrame({"a": [1, 2]})
    return {
        "text": write_text_atomic(tmp_path / "config.json", "{}"),
        "bytes": write_bytes_atomic(tmp_path / "blob.bin", b"\x00\x01"),
        "json": write_json_atomic(tmp_path / "results.json", {"x": 1}),
        "callback": write_atomic(tmp_path / "t.parquet", lambda t: frame.to_parquet(t)),
    }


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_and_folders_get_the_umask_like_any_other(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    for form, path in _writers(tmp_path).items():
        assert mode(path) == file_mode, form
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "w.bin").write_bytes(b"x")
    assert mode(tmp_path / "ckpt") == dir_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blob.bin",
        "ckpt",
        "config.json",
        "results.json",
        "t.parquet",
    ]  # fmt: skip  (no temporary file left behind)


def test_the_toolkits_files_get_the_umask(tmp_path, umask):
    """What the issue found 0600: config.json, model.safetensors, checkpoints, tables."""
    from vilalign.analysis.report import make_table, write_table
    from vilalign.config import model_config
    from vilalign.model import build_model, save_pretrained
    from vilalign.train import checkpoint as ckpt

    umask(0o022)
    model = build_model(model_config("tiny", text={"num_layers": 1}, image={"depth": 1}))
    save_pretrained(model, tmp_path / "model")
    for name in ("model.safetensors", "config.json", "text_config.json"):
        assert mode(tmp_path / "model" / name) == 0o644, name
    ckpt.save_checkpoint(tmp_path / "ckpt", 3, nn.Linear(2, 2), {"step": 3})
    assert mode(tmp_path / "ckpt" / "step-00000003") == 0o755
    assert mode(tmp_path / "ckpt" / "step-00000003" / "state.pt") == 0o644
    assert mode(tmp_path / "ckpt" / "latest.json") == 0o644
    table = make_table(
        [{"run": "r", "seed": 0, "epoch": 0, "dataset": "d", "layer": "fusion.0",
          "layer_kind": "coattention", "view": "cls", "measure": "m", "value": 0.5}]
    )  # fmt: skip
    assert mode(write_table(table, tmp_path / "alignment.csv")) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = write_json_atomic(tmp_path / "results.json", {"old": True})

    def dying(tmp: Path) -> None:
        tmp.write_text('{"new": tr')  # half a file, then the process "dies"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, dying)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_dir_replaces_keeps_or_leaves_untouched(tmp_path):
    target = tmp_path / "step-1"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("first")
    with atomic_dir(target) as tmp:  # replace: the new folder, whole
        (tmp / "b").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b"]
    with atomic_dir(target, if_exists="keep") as tmp:  # keep: the existing one wins
        (tmp / "c").write_text("third")
    assert [p.name for p in target.iterdir()] == ["b"]
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "d").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]


def test_safetensors_through_the_callback(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {"w": torch.arange(4.0)}
    path = write_atomic(tmp_path / "w.safetensors", lambda t: save_file(tensors, str(t)))
    assert torch.equal(load_file(str(path))["w"], tensors["w"])


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("maxsim text→patch/v2", {}, "maxsim_text_patch_v2"),
        ("391895#3", {}, "391895_3"),
        ("→/", {}, "unnamed"),
        ("→/", {"fallback": "plot"}, "plot"),
        ("vilbert_pt-mlm+ap__s0", {"keep": "+.=-"}, "vilbert_pt-mlm+ap_s0"),
        ("a+b", {}, "a_b"),
    ],
)
def test_safe_name(text, kwargs, expected):
    assert safe_name(text, **kwargs) == expected

"""Atomic checkpoints: round trips, interrupted writes, RNG state, compiled modules."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from vilalign.train import checkpoint as ckpt


def _module(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_and_pointers(tmp_path):
    module = _module(0)
    ckpt.save_checkpoint(tmp_path, 3, module, {"progress": {"step": 3}})
    assert ckpt.read_pointer(tmp_path) == {"name": "step-00000003", "step": 3}
    other = _module(1)
    ckpt.load_weights(ckpt.resolve(tmp_path), other)
    assert _equal(module, other)
    assert ckpt.load_state(ckpt.resolve(tmp_path)) == {"progress": {"step": 3}}
    ckpt.mark_best(tmp_path, 3, "val/accuracy", 0.9)
    ckpt.save_checkpoint(tmp_path, 5, module, {})
    ckpt.prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "step-00000003",  # kept: best
        "step-00000005",  # kept: latest
    ]
    assert json.loads((tmp_path / "best.json").read_text())["value"] == 0.9


def test_an_interrupted_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    good = _module(0)
    ckpt.save_checkpoint(tmp_path, 1, good, {"step": 1})

    def dying_save(obj, path):  # writes half a file, then the process "dies"
        with open(path, "wb") as f:
            f.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, _module(1), {"step": 2})
    monkeypatch.undo()
    assert ckpt.read_pointer(tmp_path)["step"] == 1
    restored = _module(2)
    ckpt.load_weights(ckpt.resolve(tmp_path), restored)
    assert _equal(good, restored)
    assert ckpt.load_state(ckpt.resolve(tmp_path)) == {"step": 1}
    assert not (tmp_path / "step-00000002").exists()


def test_a_leftover_temporary_folder_is_ignored_and_pruned(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _module(0), {})
    (tmp_path / ".tmp-step-00000002-abc").mkdir()  # a crash mid-write in another process
    assert ckpt.resolve(tmp_path).name == "step-00000001"
    ckpt.prune(tmp_path)
    assert not (tmp_path / ".tmp-step-00000002-abc").exists()


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _module(0), {})
    ckpt.save_checkpoint(tmp_path, 1, _module(1), {})
    restored = _module(2)
    ckpt.load_weights(ckpt.resolve(tmp_path), restored)
    assert _equal(restored, _module(1))


def test_mismatched_weights_fail_loudly(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _module(0), {})
    with pytest.raises(ValueError, match="missing keys"):
        ckpt.load_weights(ckpt.resolve(tmp_path), nn.Sequential(nn.Linear(4, 8)))


def test_rng_state_round_trip_through_a_safe_load(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    ckpt.save_checkpoint(tmp_path, 1, _module(0), {"rng": ckpt.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(ckpt.load_state(ckpt.resolve(tmp_path))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class Compiled(nn.Module):
    """Stands in for torch.compile's wrapper: it holds the module as ``_orig_mod``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_compiled_modules_save_plain_keys(tmp_path):
    module = _module(0)
    wrapped = Compiled(module)
    assert next(iter(wrapped.state_dict())).startswith("_orig_mod.")
    ckpt.save_checkpoint(tmp_path, 1, wrapped, {})
    restored = _module(1)
    ckpt.load_weights(ckpt.resolve(tmp_path), Compiled(restored))
    assert _equal(module, restored)

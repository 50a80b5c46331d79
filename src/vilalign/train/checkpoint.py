"""Training checkpoints: atomic, complete, and enough to resume a run exactly.

Layout under a run's ``checkpoints/`` folder::

    step-00000120/          one complete checkpoint
        weights.safetensors the un-compiled training module (model + task heads)
        state.pt            optimizer, scheduler, scaler, RNG states, loop position
    latest.json             {"name": "step-00000120", ...}: the newest complete checkpoint
    best.json               {"name": ..., "metric": ..., "value": ...}: the best one so far

A checkpoint is written into a hidden temporary folder and renamed into place; only then
is the ``latest.json`` pointer replaced (itself written to a temporary file and
``os.replace``d). A write interrupted at any point therefore leaves the previous
checkpoint and pointer intact and loadable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from vilalign.io import OLD_PREFIX, TEMP_PREFIX, atomic_dir, write_atomic, write_json_atomic
from vilalign.model.checkpoint import unwrap

WEIGHTS = "weights.safetensors"
STATE = "state.pt"
LATEST = "latest"
BEST = "best"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ---------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step touches: python, numpy, torch, and CUDA if present."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a tensor.
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a round trip may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


# ---------------------------------------------------------------------------- files


def save_checkpoint(
    directory: str | Path, step: int, module: nn.Module, state: dict[str, Any]
) -> Path:
    """Write a complete checkpoint for ``step`` and point ``latest.json`` at it.

    ``module`` may be compiled or wrapped: its plain module's weights are saved, so the
    keys carry no ``_orig_mod.`` prefix. ``state`` holds everything else (see module doc).
    """
    directory = Path(directory)
    name = checkpoint_name(step)
    with atomic_dir(directory / name) as tmp:  # saving a step again replaces it
        # (through write_atomic: safetensors alone would make the file 0600)
        write_atomic(tmp / WEIGHTS, lambda t: save_model(unwrap(module), str(t)))
        torch.save(state, tmp / STATE)
    write_json_atomic(directory / f"{LATEST}.json", {"name": name, "step": step})
    return directory / name


def mark_best(directory: str | Path, step: int, metric: str, value: float) -> None:
    """Point ``best.json`` at the checkpoint of ``step`` (which must already be written)."""
    payload = {"name": checkpoint_name(step), "step": step, "metric": metric, "value": value}
    write_json_atomic(Path(directory) / f"{BEST}.json", payload)


def read_pointer(directory: str | Path, which: str = LATEST) -> dict[str, Any] | None:
    """The ``latest``/``best`` pointer's content, or None when there is no checkpoint yet."""
    path = Path(directory) / f"{which}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def resolve(directory: str | Path, which: str = LATEST) -> Path | None:
    """The folder of the ``latest``/``best`` checkpoint, or None."""
    pointer = read_pointer(directory, which)
    return None if pointer is None else Path(directory) / pointer["name"]


def prune(directory: str | Path) -> None:
    """Delete checkpoints that neither pointer names, and leftovers of interrupted writes."""
    directory = Path(directory)
    keep = {p["name"] for w in (LATEST, BEST) if (p := read_pointer(directory, w)) is not None}
    for path in directory.iterdir():
        stale = path.name.startswith((TEMP_PREFIX, OLD_PREFIX)) or (
            path.name.startswith("step-") and path.name not in keep
        )
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def load_weights(path: str | Path, module: nn.Module) -> None:
    """Load a checkpoint's weights into ``module`` (plain or compiled); mismatches fail loudly."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in checkpoint {path}")
    missing, unexpected = load_model(unwrap(module), str(file), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the module: missing keys {sorted(missing)}, "
            f"unexpected keys {sorted(unexpected)}"
        )


def load_state(path: str | Path) -> dict[str, Any]:
    """The non-weight state of a checkpoint (safe loading: tensors and plain containers only)."""
    return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)

"""Training checkpoints: atomic, complete, and enough to resume a run exactly.

Layout under a run's ``checkpoints/`` folder::

    step-00000120/          one complete checkpoint
        weights.safetensors the un-compiled training module (model + task heads)
        state.pt            optimizer, scheduler, scaler, RNG states, loop position
    latest.json             {"name": "step-00000120", "step": 120, "best": {...}}
    best.json               a copy of latest.json's "best" entry, for people and older readers

The protocol is one atomic transition: a checkpoint is written into a hidden temporary
folder and renamed into place under a name no pointer uses yet; then ``latest.json``
(written to a temporary file and ``os.replace``d) names it *and* the best checkpoint so
far. That one rename commits both, so the best record can never disagree with the
checkpoint it names (two pointer files could, killed between them), and a checkpoint
saved again at the same step goes to a fresh folder (``step-N-1``) instead of replacing
the one the pointer names (two renames, killed between them, left the pointer naming a
folder that was gone). Only then are folders no pointer names deleted. A process killed
at any point therefore leaves the previous checkpoint and pointer intact and loadable.
"""

from __future__ import annotations

import json
import os
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


def _free_name(directory: Path, step: int) -> str:
    """``step-N``, or ``step-N-k`` when that name is taken (by the checkpoint a pointer
    names, or by a leftover of a killed attempt): a save never replaces a folder."""
    name = checkpoint_name(step)
    k = 0
    while (directory / (candidate := name if k == 0 else f"{name}-{k}")).exists():
        k += 1
    return candidate


def save_checkpoint(
    directory: str | Path,
    step: int,
    module: nn.Module,
    state: dict[str, Any],
    best: tuple[str, float] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step``; point ``latest.json`` at it.

    ``best``: (metric, value) when this checkpoint is the best so far; otherwise the best
    entry of the previous pointer is carried over. ``module`` may be compiled or wrapped:
    its plain module's weights are saved, so the keys carry no ``_orig_mod.`` prefix.
    ``state`` holds everything else (see module doc).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = _free_name(directory, step)
    with atomic_dir(directory / name) as tmp:
        # (through write_atomic: safetensors alone would make the file 0600, and a full
        # disk is reported as such, naming the file)
        write_atomic(tmp / WEIGHTS, lambda t: save_model(unwrap(module), str(t)))
        write_atomic(tmp / STATE, lambda t: torch.save(state, t))
    previous = read_pointer(directory)
    entry = (
        {"name": name, "step": step, "metric": best[0], "value": best[1]}
        if best is not None
        else (previous or {}).get("best")
    )
    pointer: dict[str, Any] = {"name": name, "step": step}
    if entry is not None:  # (absent until a first best: a pointer stays as short as before)
        pointer["best"] = entry
    if previous is not None:
        # kept until the next save: if the weights saved here turn out to give a
        # non-finite loss, the run rolls back to it (see roll_back)
        pointer["previous"] = {"name": previous["name"], "step": previous["step"]}
    _write_pointer(directory, pointer)
    return directory / name


def roll_back(directory: str | Path) -> dict[str, Any] | None:
    """Point ``latest.json`` back at the checkpoint before the latest one (which holds an
    update that led to a non-finite loss); returns the new pointer, None if there is none.
    The best entry stays as it was."""
    directory = Path(directory)
    latest = read_pointer(directory)
    previous = None if latest is None else latest.get("previous")
    if previous is None or not (directory / previous["name"]).is_dir():
        return None
    pointer = {**previous}
    if latest.get("best") is not None:
        pointer["best"] = latest["best"]
    _write_pointer(directory, pointer)
    return pointer


def _write_pointer(directory: Path, pointer: dict[str, Any]) -> None:
    """Commit ``latest.json`` (the one atomic step), then refresh the ``best.json`` copy."""
    write_json_atomic(directory / f"{LATEST}.json", pointer)
    if pointer.get("best") is not None:
        write_json_atomic(directory / f"{BEST}.json", pointer["best"])


def mark_best(directory: str | Path, step: int, metric: str, value: float) -> None:
    """Record the checkpoint of ``step`` (which must already be written) as the best."""
    directory = Path(directory)
    latest = read_pointer(directory)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {directory} to mark as best")
    name = latest["name"] if latest["step"] == step else checkpoint_name(step)
    entry = {"name": name, "step": step, "metric": metric, "value": value}
    _write_pointer(directory, {**latest, "best": entry})


def read_pointer(directory: str | Path, which: str = LATEST) -> dict[str, Any] | None:
    """The ``latest``/``best`` pointer's content, or None when there is no checkpoint yet.

    The best entry is read from ``latest.json`` (the committed record); ``best.json`` only
    where ``latest.json`` predates the entry (checkpoints of earlier versions).
    """
    latest = _read_json(Path(directory) / f"{LATEST}.json")
    if which == LATEST:
        return latest
    if latest is not None and "best" in latest:
        return latest["best"]
    return _read_json(Path(directory) / f"{BEST}.json")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a checkpoint pointer ({err}); fix or delete it") from None
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError(f"{path}: not a checkpoint pointer (no 'name'); fix or delete it")
    return data


def resolve(directory: str | Path, which: str = LATEST) -> Path | None:
    """The folder of the ``latest``/``best`` checkpoint, or None."""
    pointer = read_pointer(directory, which)
    return None if pointer is None else Path(directory) / pointer["name"]


def recover(directory: str | Path) -> None:
    """Repair what an earlier version could leave after a kill, before resuming:
    ``latest.json`` naming a folder that a same-step save had renamed aside
    (``.old-step-N``) is pointed back at it."""
    directory = Path(directory)
    for which in (LATEST, BEST):
        path = resolve(directory, which)
        aside = None if path is None else path.with_name(f"{OLD_PREFIX}{path.name}")
        if path is not None and not path.exists() and aside is not None and aside.is_dir():
            os.replace(aside, path)


def prune(directory: str | Path) -> None:
    """Delete checkpoints that neither pointer names, and leftovers of interrupted writes."""
    directory = Path(directory)
    keep = {p["name"] for w in (LATEST, BEST) if (p := read_pointer(directory, w)) is not None}
    previous = (read_pointer(directory) or {}).get("previous")
    if previous is not None:
        keep.add(previous["name"])
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

"""Settings are part of a result's identity: a grid folder never mixes results of other
settings, dropped cells leave the summary (kept on disk), a run's runtime switches are not
part of its identity, and earlier folders stay valid."""

from __future__ import annotations

import json

import pytest

from tests.experiments.conftest import tiny_experiment
from vilalign.experiments import runner
from vilalign.experiments.runner import (
    CELL_FILE,
    DONE_FILE,
    EXPERIMENT_FILE,
    STALE_DIR,
    read_done,
    record_cell,
    run_experiment,
)
from vilalign.experiments.spec import config_hash, expand_grid
from vilalign.locks import FolderInUseError, folder_lock

LR = {"lr": {"low": {"finetune": {"optim": {"lr": 3e-4}}}}}


@pytest.fixture
def fake_cells(monkeypatch):
    """run_cell without training: records the cell and writes a done.json from its lr."""
    ran = []

    def run_cell(exp, cell, out_dir, tracker_factory=None):
        folder = out_dir / "cells" / cell.key
        record_cell(folder, cell)
        done = {"key": cell.key, "group": cell.group, "labels": cell.labels, "seed": cell.seed,
                "test": {"test/accuracy": cell.finetune.optim.lr}}  # fmt: skip
        (folder / DONE_FILE).write_text(json.dumps(done))
        ran.append(cell.key)
        return done

    monkeypatch.setattr(runner, "run_cell", run_cell)
    return ran


def test_a_rerun_with_changed_settings_runs_the_changed_cells_and_keeps_the_old(
    tmp_path, fake_cells
):
    first = tiny_experiment(tmp_path, grid={"seeds": [0, 1], "axes": LR})
    run_experiment(first, progress=False)
    assert len(fake_cells) == 2
    # The fine-tuning lr of the grid changes: every cell is another result now.
    changed = tiny_experiment(
        tmp_path, grid={"seeds": [0, 1], "axes": {"lr": {"low": {"finetune": {"optim": {
            "lr": 1e-3}}}}}},
    )  # fmt: skip
    result = run_experiment(changed, progress=False)
    assert result.ran == [c.key for c in expand_grid(changed)] and len(result.stale) == 2
    assert all("finetune.optim.lr: 0.0003 -> 0.001" in why for why in result.stale.values())
    assert {d["test"]["test/accuracy"] for d in read_done(tmp_path)} == {1e-3}  # no mix
    saved = json.loads((tmp_path / EXPERIMENT_FILE).read_text())
    assert saved["grid"]["axes"]["lr"]["low"]["finetune"]["optim"]["lr"] == 1e-3
    kept = sorted(p.name for p in (tmp_path / STALE_DIR).iterdir())
    assert len(kept) == 2 and all((tmp_path / STALE_DIR / k / DONE_FILE).is_file() for k in kept)
    # Back to the first settings: the kept results return, nothing is trained again.
    again = run_experiment(first, progress=False)
    assert again.ran == [] and sorted(again.restored) == sorted(c.key for c in expand_grid(first))
    assert {d["test"]["test/accuracy"] for d in read_done(tmp_path)} == {3e-4}


def test_cells_dropped_from_the_grid_leave_the_summary_and_stay_on_disk(tmp_path, fake_cells):
    run_experiment(tiny_experiment(tmp_path, grid={"seeds": [0, 1, 2]}), progress=False)
    result = run_experiment(tiny_experiment(tmp_path, grid={"seeds": [0]}), progress=False)
    assert result.ran == [] and len(result.metrics) == 1
    assert sorted(result.stale.values()) == ["is not in the grid"] * 2
    cells = (tmp_path / "summary" / "cells.csv").read_text().splitlines()
    assert len(cells) == 2  # header + the one cell of the grid


def test_a_folder_of_an_earlier_version_is_adopted_when_its_settings_match(tmp_path, fake_cells):
    exp = tiny_experiment(tmp_path)
    (cell,) = expand_grid(exp)
    folder = tmp_path / "cells" / cell.key / "finetune"
    folder.mkdir(parents=True)
    config = json.loads(cell.finetune.model_dump_json())
    config["train"]["device"] = "cuda"  # a runtime field: not part of the identity
    (folder / "config.json").write_text(json.dumps(config))
    (folder.parent / DONE_FILE).write_text(json.dumps({"key": cell.key, "group": cell.group,
        "labels": cell.labels, "seed": 0, "test": {"test/accuracy": 0.5}}))  # fmt: skip
    result = run_experiment(exp, progress=False)
    assert result.ran == [] and result.stale == {}
    assert (folder.parent / CELL_FILE).is_file()  # adopted: recorded now


def test_runtime_fields_are_not_part_of_a_runs_identity():
    exp = tiny_experiment(__import__("pathlib").Path("unused"), grid={"pretraining": ["mlm"]})
    (cell,) = expand_grid(exp)
    other = cell.pretrain.model_copy(
        update={"train": cell.pretrain.train.model_copy(update={"device": "cpu", "progress": True})}
    )
    assert config_hash(other) == config_hash(cell.pretrain)
    seed = cell.pretrain.model_copy(
        update={"train": cell.pretrain.train.model_copy(update={"seed": 5})}
    )
    assert config_hash(seed) != config_hash(cell.pretrain)


def test_a_grid_folder_takes_one_process_at_a_time(tmp_path, fake_cells):
    from tests.bad_inputs import held

    with held(tmp_path), pytest.raises(FolderInUseError, match="is in use by pid"):
        run_experiment(tiny_experiment(tmp_path), progress=False)
    assert fake_cells == [] and not (tmp_path / EXPERIMENT_FILE).exists()
    with folder_lock(tmp_path, "experiment"):  # re-entrant: the runner inside is fine
        run_experiment(tiny_experiment(tmp_path), progress=False)

"""Resuming with changed settings: applied from the resumed step and recorded, or refused
with the list of differences — never recorded one way and run another."""

from __future__ import annotations

import json

import pytest
import torch
from tests.train.faults import toy_trainer

from vilalign.config import ConfigError
from vilalign.train.config import FinetuneConfig
from vilalign.train.optim import lr_factor
from vilalign.train.run import CHANGES_FILE, CONFIG_FILE, _prepare_run_dir
from vilalign.train.tracker import FileTracker


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(FileTracker, "plot", lambda self: None)


def test_a_resumed_run_trains_on_at_the_new_learning_rate(tmp_path):
    first = toy_trainer(tmp_path / "a", max_steps=6)
    first.fit()
    resumed = toy_trainer(tmp_path / "a", lr=0.5)  # 10x the rate of the first part
    resumed.resume()
    groups = resumed.optimizer.param_groups
    factor = lr_factor(6, resumed.total_steps, resumed.optim_cfg)
    assert [g["lr"] for g in groups] == [0.5 * factor] * len(groups)
    resumed.fit()
    same_rate = toy_trainer(tmp_path / "b", max_steps=6)
    same_rate.fit()
    unchanged = toy_trainer(tmp_path / "b")
    unchanged.fit(resume=True)
    a, b = resumed.task.state_dict(), unchanged.task.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the new rate took effect


def test_an_unchanged_resume_keeps_the_saved_settings_bit_for_bit(tmp_path):
    toy_trainer(tmp_path, max_steps=6).fit()
    resumed = toy_trainer(tmp_path)
    before = [dict(g) for g in resumed.optimizer.param_groups]
    resumed.resume()
    after = resumed.optimizer.param_groups
    for old, new in zip(before, after, strict=True):
        assert new["initial_lr"] == old["initial_lr"] and new["betas"] == old["betas"]


def _cfg(**overrides) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"preset": "tiny", **overrides})


def _pointer(run_dir, step: int) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"name": "s", "step": step}))


def test_a_safe_change_is_recorded_with_its_step_and_config_json_says_what_runs(tmp_path):
    _prepare_run_dir(_cfg(), tmp_path, resume=False)
    _pointer(tmp_path, 120)
    changed = _cfg(optim={"lr": 1e-5}, train={"epochs": 20})
    _prepare_run_dir(changed, tmp_path, resume=True)
    changes = json.loads((tmp_path / CHANGES_FILE).read_text())
    assert changes == [
        {"step": 120, "changes": {"optim.lr": [1e-4, 1e-5], "train.epochs": [10, 20]}}
    ]
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["optim"]["lr"] == 1e-5
    _prepare_run_dir(changed, tmp_path, resume=True)  # again (a kill before config.json)
    assert len(json.loads((tmp_path / CHANGES_FILE).read_text())) == 1


def test_a_change_that_cannot_apply_mid_run_is_refused_listing_every_difference(tmp_path):
    _prepare_run_dir(_cfg(), tmp_path, resume=False)
    _pointer(tmp_path, 8)
    with pytest.raises(ConfigError) as info:
        _prepare_run_dir(
            _cfg(model={"depth": 6}, train={"batch_size": 8}, optim={"lr": 1e-3}),
            tmp_path,
            resume=True,
        )
    message = str(info.value)
    assert "model.depth: 4 -> 6" in message and "train.batch_size: 32 -> 8" in message
    assert "optim.lr" not in message  # (that one could change)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["model"]["depth"] == 4
    assert not (tmp_path / CHANGES_FILE).exists()

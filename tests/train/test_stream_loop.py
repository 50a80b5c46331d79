"""The loop on a streamed (iterable) dataset: sized by epoch_length, resumable mid-epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import IterableDataset

from vilalign.model import build_model
from vilalign.train.config import OptimConfig, TrainConfig
from vilalign.train.loop import Trainer, seed_everything
from vilalign.train.tasks import FinetuneTask


class Killed(Exception):
    pass


class ToyStream(IterableDataset):
    """A map-style dataset read as a stream in a (seed, epoch) order, like the shard reader."""

    def __init__(self, data, epoch_length: int | None) -> None:
        self.data, self.epoch_length, self.epoch = data, epoch_length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.epoch))
        return (self.data[int(i)] for i in order[: self.epoch_length])


def _trainer(make_config, toy_dataset, collate, run_dir, epoch_length=10):
    seed_everything(0)
    model = build_model(make_config())
    cfg = TrainConfig(
        batch_size=2, epochs=2, progress=False, checkpoint={"every_n_steps": 2}, device="cpu"
    )
    stream = ToyStream(toy_dataset(12), epoch_length)
    return Trainer(
        FinetuneTask(model, "easyvqa"), cfg, OptimConfig(), run_dir, stream, None, collate
    )


def test_a_stream_trains_epoch_length_per_epoch_and_resumes_mid_epoch(
    make_config, toy_dataset, collate, tmp_path
):
    whole = _trainer(make_config, toy_dataset, collate, tmp_path / "whole")
    assert whole.steps_per_epoch == 5
    assert [h["step"] for h in whole.fit().history] == [5, 10]

    def kill_after_step_7(trainer: Trainer) -> None:
        if trainer.progress.step == 7:
            raise Killed

    broken = _trainer(make_config, toy_dataset, collate, tmp_path / "broken")
    broken.step_callbacks.append(kill_after_step_7)
    with pytest.raises(Killed):
        broken.fit()
    resumed = _trainer(make_config, toy_dataset, collate, tmp_path / "broken")
    resumed.fit(resume=True)
    a, b = whole.task.state_dict(), resumed.task.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_without_epoch_length_is_an_error_naming_it(
    make_config, toy_dataset, collate, tmp_path
):
    with pytest.raises(ValueError, match=r"data\.epoch_length"):
        _trainer(make_config, toy_dataset, collate, tmp_path, epoch_length=None)

"""Epoch 0: callbacks that ask for it measure the model before its first optimiser step."""

from __future__ import annotations

import torch

from vilalign.model import build_model
from vilalign.train.config import OptimConfig, TrainConfig
from vilalign.train.loop import Trainer, seed_everything
from vilalign.train.tasks import FinetuneTask


class Recorder:
    """An epoch callback with ``on_fit_start``, as ``EpochAlignment`` has."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.epochs: list[int] = []

    def on_fit_start(self, ctx):
        state = {k: v.clone() for k, v in ctx.task.model.state_dict().items()}
        self.starts.append((ctx.epoch, ctx.step, state))
        return {"align/x": -1.0}

    def __call__(self, ctx):
        self.epochs.append(ctx.epoch)


def _trainer(make_config, toy_dataset, collate, run_dir, callbacks, epochs=1):
    seed_everything(0)
    model = build_model(make_config())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(
        batch_size=4, epochs=epochs, progress=False, monitor="val/loss", monitor_mode="min"
    )
    task, data = FinetuneTask(model, "easyvqa"), (toy_dataset(8), toy_dataset(4, seed=1))
    trainer = Trainer(task, cfg, OptimConfig(lr=1e-3), run_dir, *data, collate, callbacks=callbacks)
    return trainer, initial


def test_epoch_zero_sees_the_untrained_model_once(make_config, toy_dataset, collate, tmp_path):
    recorder, plain = Recorder(), []
    trainer, initial = _trainer(make_config, toy_dataset, collate, tmp_path,
                                [recorder, lambda ctx: plain.append(ctx.epoch)])  # fmt: skip
    trainer.fit()
    ((epoch, step, state),) = recorder.starts
    assert (epoch, step) == (0, 0)
    assert all(torch.equal(state[k], initial[k]) for k in initial)  # before any step
    assert recorder.epochs == plain == [1]  # a plain callback is not called at epoch 0
    records = [r for r in trainer.tracker.records() if "align/x" in r]
    assert [(r["step"], r["epoch"]) for r in records] == [(0, 0)]
    # a resumed run (its step is past 0) does not measure epoch 0 again
    again, _ = _trainer(make_config, toy_dataset, collate, tmp_path, [recorder], epochs=2)
    again.fit(resume=True)
    assert len(recorder.starts) == 1 and recorder.epochs == [1, 2]

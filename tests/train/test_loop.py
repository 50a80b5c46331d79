"""The one loop: accumulation, exact resume, NaN stop, early stopping, files, callbacks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vilalign.config import ConfigError
from vilalign.model import build_model
from vilalign.train import checkpoint as ckpt
from vilalign.train.config import OptimConfig, TrainConfig, monitor_mode_of
from vilalign.train.loop import NonFiniteLossError, Trainer, seed_everything
from vilalign.train.tasks import FinetuneTask, StepResult


class Killed(Exception):
    """Stands in for the process being killed."""


def _trainer(make_config, toy_dataset, collate, run_dir, seed=0, dropout=True, **train):
    seed_everything(seed)
    off = {} if dropout else {"dropout": 0.0, "attention_dropout": 0.0}
    model = build_model(make_config(**off))
    if not dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    cfg = TrainConfig(
        **{
            "batch_size": 2,
            "epochs": 2,
            "progress": False,
            "monitor": "val/accuracy",
            "monitor_mode": "max",
            "seed": seed,
            **train,
        }
    )
    return Trainer(
        FinetuneTask(model, "easyvqa"),
        cfg,
        OptimConfig(lr=1e-3, eps=1e-3 if not dropout else 1e-8),
        run_dir,
        toy_dataset(12),
        toy_dataset(6, seed=1),
        collate,
    )


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.task.state_dict().items()}


def test_accumulating_four_micro_batches_equals_one_batch_four_times_larger(
    make_config, toy_dataset, collate, tmp_path
):
    small = _trainer(
        make_config,
        toy_dataset,
        collate,
        tmp_path / "a",
        dropout=False,
        batch_size=2,
        target_batch_size=8,
        max_steps=1,
    )
    big = _trainer(
        make_config, toy_dataset, collate, tmp_path / "b", dropout=False, batch_size=8, max_steps=1
    )
    # Same samples in the first step: the shuffle depends on the seed only.
    small.fit()
    big.fit()
    a, b = _state(small), _state(big)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    before = _fresh(make_config).state_dict()
    changed = [k for k in a if not torch.equal(a[k], before[k])]
    assert changed  # the step did something


def _fresh(make_config) -> nn.Module:
    seed_everything(0)
    return FinetuneTask(build_model(make_config()), "easyvqa")


def test_kill_and_resume_ends_bit_identical_to_an_uninterrupted_run(
    make_config, toy_dataset, collate, tmp_path
):
    kw = {"target_batch_size": 4, "checkpoint": {"every_n_steps": 2}}
    whole = _trainer(make_config, toy_dataset, collate, tmp_path / "whole", **kw)
    whole.fit()

    def kill_after_step_5(trainer: Trainer) -> None:
        if trainer.progress.step == 5:
            raise Killed

    broken = _trainer(make_config, toy_dataset, collate, tmp_path / "broken", **kw)
    broken.step_callbacks.append(kill_after_step_5)
    with pytest.raises(Killed):
        broken.fit()
    assert ckpt.read_pointer(tmp_path / "broken" / "checkpoints")["step"] == 4
    # A new process: fresh model and trainer (different init seed), then resume.
    resumed = _trainer(make_config, toy_dataset, collate, tmp_path / "broken", seed=0, **kw)
    seed_everything(123)
    assert resumed.fit(resume=True).history[-1]["step"] == 6
    a, b = _state(whole), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = ("samples_per_s", "data_wait_share")
    for h1, h2 in zip(whole.history, resumed.history, strict=True):
        assert {k: v for k, v in h1.items() if not k.endswith(timing)} == {
            k: v for k, v in h2.items() if not k.endswith(timing)
        }
    # The metrics file has no duplicate steps from the killed attempt.
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    ]
    whole_steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == whole_steps


def test_max_steps_inside_an_epoch_leaves_it_open_for_a_longer_resumed_run(
    make_config, toy_dataset, collate, tmp_path
):
    """6 steps an epoch: stopping at step 4 evaluates there, but epoch 1 is not over."""
    short = _trainer(make_config, toy_dataset, collate, tmp_path, max_steps=4)
    history = short.fit().history
    assert [(h["epoch"], h["step"], h.get("partial")) for h in history] == [(1, 4, True)]
    assert (short.progress.epoch, short.progress.batch_in_epoch) == (0, 4)
    longer = _trainer(make_config, toy_dataset, collate, tmp_path)
    history = longer.fit(resume=True).history
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 4), (1, 6), (2, 12)]
    assert "partial" not in history[1]


def test_callback_metrics_can_be_monitored_and_a_kill_inside_one_reruns_it(
    make_config, toy_dataset, collate, tmp_path
):
    """Epoch callbacks run before the epoch's checkpoint: what they add is never lost."""
    calls: list[int] = []

    def score(context) -> dict[str, float]:
        calls.append(context.epoch)
        if context.epoch == 2 and calls.count(2) == 1:
            raise Killed
        return {"align/score": 1.0 / context.epoch}  # best at epoch 1

    kw = {"epochs": 3, "monitor": "align/score", "monitor_mode": "max"}
    first = _trainer(make_config, toy_dataset, collate, tmp_path, **kw)
    first.callbacks.append(score)
    with pytest.raises(Killed):
        first.fit()
    assert ckpt.read_pointer(tmp_path / "checkpoints")["step"] == 6  # epoch 1's, not 2's
    again = _trainer(make_config, toy_dataset, collate, tmp_path, **kw)
    again.callbacks.append(score)
    result = again.fit(resume=True)
    assert calls == [1, 2, 2, 3]
    assert [h["align/score"] for h in result.history] == [1.0, 0.5, 1.0 / 3]
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.BEST)["step"] == 6


class NanAtStep(FinetuneTask):
    def __init__(self, model, at: int) -> None:
        super().__init__(model, "easyvqa")
        self.calls, self.at = 0, at

    def forward(self, batch) -> StepResult:
        result = super().forward(batch)
        self.calls += 1
        if self.calls == self.at:
            result.loss = result.loss * float("nan")
        return result


def test_a_nan_loss_stops_the_run_and_the_last_checkpoint_stays_loadable(
    make_config, toy_dataset, collate, tmp_path
):
    trainer = _trainer(make_config, toy_dataset, collate, tmp_path, checkpoint={"every_n_steps": 2})
    trainer.task = NanAtStep(trainer.task.model, at=4)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan .* step 4.*step-00000002"):
        trainer.fit()
    last = ckpt.resolve(tmp_path / "checkpoints")
    assert last.name == "step-00000002"
    ckpt.load_weights(last, _fresh(make_config))
    assert ckpt.load_state(last)["progress"]["step"] == 2


def test_run_outputs_callbacks_and_early_stopping(make_config, toy_dataset, collate, tmp_path):
    seen = []

    def callback(ctx):
        seen.append((ctx.epoch, ctx.step, ctx.metrics["val/accuracy"]))
        return {"analysis/dummy": float(ctx.epoch)}

    trainer = _trainer(
        make_config,
        toy_dataset,
        collate,
        tmp_path,
        batch_size=4,
        epochs=6,
        monitor="val/loss",
        monitor_mode="max",
        early_stopping={"patience": 1},
    )
    trainer.callbacks.append(callback)
    result = trainer.fit()
    # "max" of a falling loss: epoch 1 is the best, epoch 2 does not improve → stop.
    assert result.stopped_early and len(result.history) == 2
    assert [s[0] for s in seen] == [1, 2]
    assert result.best_checkpoint.name == "step-00000003"  # epoch 1 = 3 steps
    assert result.history[-1]["analysis/dummy"] == 2.0
    for name in ("metrics.jsonl", "metrics.csv", "metrics.png"):
        assert (tmp_path / name).is_file()
    assert {"train/loss", "val/loss", "val/accuracy", "train/samples_per_s"} <= set(
        result.history[0]
    )


def test_an_unknown_monitor_names_the_available_metrics(
    make_config, toy_dataset, collate, tmp_path
):
    trainer = _trainer(make_config, toy_dataset, collate, tmp_path, monitor="val/acc", max_steps=1)
    with pytest.raises(ConfigError, match=r"train.monitor: .*'val/acc'.*val/accuracy"):
        trainer.fit()


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val/accuracy", "max"), ("val/b/f1_macro", "max"), ("val/mean", "max"),
     ("val/loss", "min"), ("train/mlm_loss", "min")],
)  # fmt: skip
def test_a_named_monitor_rises_or_falls_by_its_name(monitor, mode):
    """Without monitor_mode, an accuracy is maximised and a loss minimised (never the reverse)."""
    assert monitor_mode_of(monitor) == mode
    assert TrainConfig(monitor=monitor).monitor == monitor


def test_a_monitor_of_unknown_direction_asks_for_monitor_mode():
    with pytest.raises(ValueError, match="monitor_mode"):
        TrainConfig(monitor="align/fusion.3/cls/linear_cka")
    assert TrainConfig(monitor="align/fusion.3/cls/linear_cka", monitor_mode="max")

"""Kill points of the training protocol: a run killed anywhere resumes bit-identically.

A toy run (16 samples, 2 epochs of 8 steps, a checkpoint every 4 steps, validation, an
epoch callback that writes a file, the best checkpoint kept) is killed by SIGKILL at
protocol events — each rename (checkpoint folders, weights, state, latest.json, the
best.json copy, callback files), each deletion (pruning), each metrics-file write — and
resumed; the resumed run must end with the uninterrupted run's weights (bit for bit),
history, metric records (none lost, none twice), pointers and callback files. The fast
suite kills at every event of the second epoch's end (validation, callback, best record,
checkpoint, pruning, the export of the final state); ``-m slow`` at every event of the run.
"""

from __future__ import annotations

import json

import pytest
import torch
from tests.train.faults import count_events, killed_at, outcome, same, toy_trainer

from vilalign.train import checkpoint as ckpt
from vilalign.train.loop import NonFiniteLossError
from vilalign.train.tracker import FileTracker


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(FileTracker, "plot", lambda self: None)


def _fit(run_dir, resume: bool = False) -> None:
    toy_trainer(run_dir).fit(resume=resume)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FileTracker, "plot", lambda self: None)
        events = count_events(run_dir.parent / "counted", _fit)
        trainer = toy_trainer(run_dir)
        trainer.fit()
    return events, outcome(run_dir, trainer)


def _resumed_outcome(run_dir):
    trainer = toy_trainer(run_dir)
    trainer.fit(resume=True)
    return outcome(run_dir, trainer)


def _sweep(points, reference, tmp_path) -> dict[int, list[str]]:
    failures = {}
    for k in points:
        run_dir = tmp_path / f"k{k}"
        assert killed_at(run_dir, k, _fit) == -9
        try:
            diff = same(_resumed_outcome(run_dir), reference)
        except Exception as err:  # (a resume that fails counts as a difference)
            diff = [f"{type(err).__name__}: {err}"]
        if diff:
            failures[k] = diff
    return failures


def test_a_kill_at_any_event_of_an_epochs_end_resumes_bit_identically(reference, tmp_path):
    events, expected = reference
    assert events > 30  # the protocol's renames, deletions and metric writes are counted
    # The last epoch's end, from its callback on: the callback's file and metrics, the
    # weights, the state, the checkpoint folder, latest.json (with the best record) and
    # the best.json copy.
    tail = range(events - 7, events + 1)
    assert _sweep(tail, expected, tmp_path) == {}


@pytest.mark.slow
def test_a_kill_at_every_event_of_the_run_resumes_bit_identically(reference, tmp_path):
    events, expected = reference
    failures = _sweep(range(1, events + 1), expected, tmp_path)
    assert failures == {}, f"{len(failures)} of {events} kill points differ: {failures}"


def test_a_checkpoint_on_the_last_step_then_a_kill_in_the_final_validation(tmp_path):
    """The reported bug: a step checkpoint at the run's last step (as earlier versions
    wrote), killed during the last epoch's end: --resume must still run that end."""
    reference = toy_trainer(tmp_path / "whole")
    reference.fit()
    trainer = toy_trainer(tmp_path / "run", checkpoint={"every_n_steps": 16})

    def save_on_the_last_step_then_die_validating(t) -> None:
        if t.progress.step == 16:
            t.save()  # what the step checkpoint did at the epoch's last step

            def die(*args, **kwargs):
                raise KeyboardInterrupt

            t.evaluate = die

    trainer.step_callbacks.append(save_on_the_last_step_then_die_validating)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert ckpt.read_pointer(tmp_path / "run" / "checkpoints")["step"] == 16
    resumed = toy_trainer(tmp_path / "run")
    result = resumed.fit(resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]  # epoch 2's end ran
    assert result.best_value == reference.progress.best_value
    weights, expected = resumed.task.state_dict(), reference.task.state_dict()
    assert all(torch.equal(weights[k], expected[k]) for k in weights)


def test_a_same_step_checkpoint_renamed_aside_by_an_earlier_version_is_recovered(tmp_path):
    """Earlier versions replaced a same-step checkpoint by two renames; killed between
    them, latest.json named a folder that was gone (only .old-step-N was left)."""
    trainer = toy_trainer(tmp_path, max_steps=6)
    trainer.fit()
    folder = ckpt.resolve(tmp_path / "checkpoints")
    folder.rename(folder.with_name(f".old-{folder.name}"))
    resumed = toy_trainer(tmp_path)
    assert resumed.fit(resume=True).history[-1]["step"] == 16
    assert ckpt.resolve(tmp_path / "checkpoints").is_dir()


def test_the_best_record_is_committed_with_the_checkpoint_it_names(tmp_path):
    """One rename commits both: best.json is only a copy, and a stale copy is not read."""
    trainer = toy_trainer(tmp_path)
    trainer.fit()
    folder = tmp_path / "checkpoints"
    latest = ckpt.read_pointer(folder)
    assert latest["best"] == json.loads((folder / "best.json").read_text())
    (folder / "best.json").write_text(json.dumps({**latest["best"], "value": -1.0}))
    assert ckpt.read_pointer(folder, ckpt.BEST) == latest["best"]
    assert ckpt.resolve(folder, ckpt.BEST).is_dir()


# ---------------------------------------------------------------------------- non-finite


def test_a_diverging_run_stops_before_saving_the_update_that_diverged(tmp_path):
    """lr 1e6: the first updates blow the weights up, a later loss is inf or nan. The
    checkpoint left behind holds only weights that gave finite losses after them."""
    trainer = toy_trainer(tmp_path, lr=1e6, checkpoint={"every_n_steps": 1})
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message and "--resume --set optim.lr=1e+05" in message
    latest = ckpt.read_pointer(tmp_path / "checkpoints")
    assert f"step-{latest['step']:08d}" in message
    # The weights of the checkpoint gave a finite loss: training on from it at a sane
    # rate works (the fix the message names).
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path, latest))
    resumed = toy_trainer(tmp_path, lr=0.05)
    assert resumed.fit(resume=True).history[-1]["step"] == 16
    changes = [k for k in resumed.optimizer.param_groups if k["initial_lr"] != 0.05]
    assert changes == []  # the new rate is the one in force


def _weights(run_dir, pointer):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / pointer["name"] / ckpt.WEIGHTS)).values()


def test_skip_mode_leaves_the_weights_and_counts_the_skipped_steps(tmp_path):
    trainer = toy_trainer(tmp_path, on_nonfinite="skip")
    calls = {"n": 0}
    forward = trainer.task.forward

    def nan_on_third_call(batch):
        calls["n"] += 1
        result = forward(batch)
        if calls["n"] == 3:
            result.loss = result.loss * float("nan")
        return result

    trainer.task.forward = nan_on_third_call
    before = {}

    def snapshot(t):
        if t.progress.step == 2:
            before.update({k: v.clone() for k, v in t.task.state_dict().items()})
        if t.progress.step == 3:
            after = t.task.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)  # not applied

    trainer.step_callbacks.append(snapshot)
    trainer.fit()
    assert trainer.progress.skipped_steps == 1 and trainer.progress.step == 16
    records = FileTracker(tmp_path).records()
    assert any(r.get("train/skipped_steps") == 1 for r in records)

"""Tuning workers that start together and workers that are killed."""

from __future__ import annotations

import os
import time

import optuna
from optuna.trial import TrialState

from tests.experiments.conftest import tiny_experiment
from tests.train.faults import in_child
from vilalign.experiments.tune import (
    WORKER_ATTR,
    WORKERS_DIR,
    load_study,
    original_number,
    requeue_dead_trials,
)
from vilalign.locks import folder_lock

SPACE = {"finetune.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


def test_workers_starting_at_the_same_moment_create_one_new_study(tmp_path):
    """Two workers on a new SQLite study within milliseconds: without the creation lock
    one of them died in the storage's schema migration (an alembic IntegrityError)."""
    exp = tiny_experiment(tmp_path, tune={"space": SPACE})
    start = time.time() + 0.3

    def worker() -> None:
        time.sleep(max(0.0, start - time.time()))
        study = load_study(exp, tmp_path)
        study.enqueue_trial({"finetune.optim.lr": 2e-4})

    pids = [os.fork() for _ in range(1)]
    if pids[0] == 0:  # pragma: no cover - the second worker
        code = 0
        try:
            worker()
        except BaseException:
            code = 3
        os._exit(code)
    assert in_child(worker) == 0  # the first worker, meanwhile
    _, status = os.waitpid(pids[0], 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    study = load_study(exp, tmp_path)
    assert len(optuna.get_all_study_names(study._storage)) == 1 and len(study.trials) == 2


def test_the_trial_of_a_killed_worker_is_failed_and_queued_again_in_its_folder(tmp_path):
    exp = tiny_experiment(tmp_path, tune={"space": SPACE})
    study = load_study(exp, tmp_path)
    workers = tmp_path / WORKERS_DIR

    def killed_worker() -> None:  # claims trial 0, then dies holding it
        with folder_lock(workers / "host-1", "worker"):
            trial = study.ask({"finetune.optim.lr": optuna.distributions.FloatDistribution(
                1e-4, 1e-3, log=True)})  # fmt: skip
            claim = {"name": "host-1", "trial": trial.number}
            study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, claim)
            os.kill(os.getpid(), 9)

    assert in_child(killed_worker) == -9
    alive = study.ask()  # a trial of a live worker (this process): left alone
    with folder_lock(workers / "host-2", "worker"):
        claim = {"name": "host-2", "trial": alive.number}
        study._storage.set_trial_system_attr(alive._trial_id, WORKER_ATTR, claim)
        assert requeue_dead_trials(study, workers) == [0]
        assert requeue_dead_trials(study, workers) == []  # never queued twice
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.trials[2]
    assert retry.params == study.trials[0].params
    assert original_number(retry) == 0  # runs in trials/trial_0000, resuming its checkpoints

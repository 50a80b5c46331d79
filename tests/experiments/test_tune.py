"""Optuna studies on CPU: a few trials, continued from the same SQLite file, a
multi-objective Pareto front, and a pruned trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tests.experiments.conftest import tiny_experiment
from vilalign.cli import main
from vilalign.experiments.spec import ObjectiveSpec, expand_grid, load_experiment
from vilalign.experiments.tune import (
    BEST_FILE,
    PARETO_FILE,
    load_study,
    monitored_metric,
    objective_value,
    run_study,
)
from vilalign.train.loop import FitResult
from vilalign.train.run import RunResult

FAST = {"finetune": {"train": {"epochs": 1, "max_steps": 2}}}
SPACE = {
    "finetune.optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "finetune.optim.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "model.dropout": {"type": "categorical", "choices": [0.0, 0.1]},
}


def test_study_runs_and_continues_from_its_sqlite_file(tmp_path, capsys):
    exp = tiny_experiment(tmp_path, **FAST, tune={"n_trials": 2, "space": SPACE, "pruner": "none"})
    first = run_study(exp)
    assert first.n_trials == 2
    assert (tmp_path / "optuna.db").is_file()
    best_before = first.study.best_value
    # A second invocation, from the command line, on the same SQLite file continues it.
    file = tmp_path / "exp.json"
    file.write_text(exp.model_dump_json())
    assert main(["tune", str(file), "--n-trials", "1", "--output-dir", str(tmp_path)]) == 0
    assert "3 trials" in capsys.readouterr().out
    study = load_study(exp, tmp_path)
    assert len(study.trials) == 3
    assert study.best_value >= best_before  # the best trial is kept
    # The best trial's experiment is ready to run: it validates, with the tuned values.
    best_file = tmp_path / BEST_FILE
    best = load_experiment(best_file)
    params = study.best_trial.params
    assert best.finetune["optim"]["lr"] == pytest.approx(params["finetune.optim.lr"])
    assert best.model["dropout"] == params["model.dropout"]
    assert yaml.safe_load((tmp_path / "best_finetune.yaml").read_text())["optim"]["lr"] > 0


def test_multi_objective_study_reports_a_pareto_front(tmp_path):
    tune = {
        "n_trials": 3,
        "space": SPACE,
        "objectives": [
            {"metric": "val/accuracy", "direction": "maximize"},
            {"metric": "val/loss", "direction": "minimize"},
        ],
    }
    result = run_study(tiny_experiment(tmp_path, **FAST, tune=tune))
    assert result.study.directions == [
        optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
    ]  # fmt: skip
    assert 1 <= len(result.best) <= 3
    assert all(len(b["values"]) == 2 for b in result.best)
    front = (tmp_path / PARETO_FILE).read_text().splitlines()
    assert len(front) == len(result.best) + 1
    assert isinstance(result.study.pruner, optuna.pruners.NopPruner)


def test_a_trial_with_a_poor_metric_is_pruned(tmp_path):
    tune = {
        "n_trials": 2,
        "space": {"finetune.optim.lr": {"type": "float", "low": 1e-9, "high": 3e-3, "log": True}},
        "objectives": [{"metric": "val/loss", "direction": "minimize"}],
        "pruner": "median",
        "startup_trials": 1,
    }
    exp = tiny_experiment(tmp_path, finetune={"train": {"epochs": 3, "max_steps": 9}}, tune=tune)
    study = load_study(exp, tmp_path)
    study.enqueue_trial({"finetune.optim.lr": 3e-3})  # learns: val loss falls
    study.enqueue_trial({"finetune.optim.lr": 1e-9})  # does not move: falls behind
    result = run_study(exp)
    states = [t.state for t in result.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    pruned = result.study.trials[1]
    assert max(pruned.intermediate_values) < 3  # stopped before its last epoch


def test_objective_is_read_from_the_epoch_the_monitor_kept():
    # Epoch 2 has the best val/accuracy (1.0); epoch 1's row holds 1.0 too, as its epoch
    # number and its train/accuracy, and must not be taken for the best row.
    history = [
        {"epoch": 1, "step": 4, "train/accuracy": 1.0, "val/accuracy": 0.5, "val/loss": 0.9},
        {"epoch": 2, "step": 8, "train/accuracy": 0.75, "val/accuracy": 1.0, "val/loss": 0.2},
        {"epoch": 3, "step": 12, "train/accuracy": 1.0, "val/accuracy": 1.0, "val/loss": 0.1},
    ]
    fit = FitResult(history, Path("."), None, None, best_value=1.0)
    result = RunResult(fit, {}, Path("."), Path("."))
    cfg = expand_grid(tiny_experiment(Path("unused")))[0].finetune  # easyvqa: val/accuracy
    monitor = monitored_metric(cfg, history)
    assert monitor == "val/accuracy"
    spec = ObjectiveSpec(metric="val/loss", direction="minimize")
    assert objective_value(spec, result, monitor) == 0.2


def test_a_continued_study_does_not_repeat_the_first_invocations_parameters(tmp_path):
    exp = tiny_experiment(tmp_path, tune={"space": SPACE, "pruner": "none"})
    lr = SPACE["finetune.optim.lr"]

    def objective(trial):
        return trial.suggest_float("finetune.optim.lr", lr["low"], lr["high"], log=True)

    for _ in range(2):  # two invocations on the same SQLite file
        load_study(exp, tmp_path).optimize(objective, n_trials=2)
    values = [t.params["finetune.optim.lr"] for t in load_study(exp, tmp_path).trials]
    assert len(values) == 4 and len(set(values)) == 4

"""Experiments: grid files, the resumable runner, Optuna tuning, the MLflow run store,
the HTML report and the demo (see DESIGN.md, ``experiments/``)."""

from vilalign.experiments.spec import Cell, ExperimentConfig, expand_grid, load_experiment

__all__ = ["Cell", "ExperimentConfig", "expand_grid", "load_experiment"]

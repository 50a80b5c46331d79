"""Hyper-parameter search with Optuna over an experiment file's ``tune`` section.

A trial takes the base cell of the grid (the first value of every axis, first seed),
applies the values Optuna suggests for the declared search space (dotted paths into
``model``, ``pretrain`` and ``finetune``), pretrains if that cell pretrains, fine-tunes on
each dataset an objective names, and returns the objective values.

- **Single objective**: the per-epoch metric is reported to Optuna and a median or
  Hyperband pruner stops a trial that falls behind the others.
- **Multi-objective** (e.g. accuracy on two datasets, or accuracy and an alignment
  score ``align/<layer>/<view>/<measure>``): the Pareto front is reported; no pruning,
  which Optuna does not support for several objectives.

Storage is a SQLite file in the output folder by default, so a study survives a crash and
a second invocation continues it; any RDB URL (PostgreSQL) lets many workers share one.
The best trial's experiment file is written out ready for ``vilalign run`` (one per
Pareto-optimal trial for several objectives).

Workers may be killed and may start together:

- A new SQLite study is created under a lock beside its file, so workers started at the
  same moment do not race in its schema creation.
- Each worker holds a lock on ``workers/<host>-<pid>/`` while it runs and records itself
  in the trial it runs. A trial left RUNNING by a worker whose lock is free (the worker
  was killed) is marked FAIL and queued again with the same parameters; the retry runs in
  the original trial's folder and resumes from its checkpoints, so its value is the one
  the uninterrupted trial would have given. Workers on other hosts are covered by
  Optuna's heartbeat (a trial silent for :data:`GRACE_S` seconds is failed and retried).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vilalign.config import deep_merge, validate
from vilalign.experiments.runner import alignment_callback, prepare_stage
from vilalign.experiments.spec import (
    Cell,
    ExperimentConfig,
    ObjectiveSpec,
    ParamSpace,
    TuneConfig,
    expand_grid,
)
from vilalign.experiments.tracking import create_sqlite
from vilalign.locks import brief_lock, folder_lock, is_held
from vilalign.train.config import FinetuneConfig
from vilalign.train.loop import EpochContext, NonFiniteLossError
from vilalign.train.run import RunResult, run_finetuning, run_pretraining
from vilalign.train.tasks import task_spec

log = logging.getLogger(__name__)

#: Heartbeat of a running trial, and the silence after which another worker fails it.
HEARTBEAT_S, GRACE_S = 60, 180
#: How often one trial is queued again after its worker was killed.
MAX_RETRIES = 3
WORKER_ATTR = "vilalign.worker"
BEST_FILE = "best_experiment.yaml"
BEST_RUN_FILE = "best_finetune.yaml"
PARETO_FILE = "pareto_front.csv"
TRIALS_FILE = "trials.csv"
WORKERS_DIR = "workers"


@dataclass
class TuneResult:
    study: Any  # optuna.Study
    out_dir: Path
    n_trials: int
    best: list[dict[str, Any]]  # number, values, params of the best / Pareto-optimal trials
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------- study setup


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'optuna.db'}"


def make_sampler(tc: TuneConfig, offset: int = 0) -> Any:
    """The sampler, seeded with ``tc.seed + offset`` (``offset``: trials already run)."""
    import optuna

    seed = tc.seed + offset
    if tc.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tc.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    multi = len(tc.objectives) > 1
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=multi)


def make_pruner(tc: TuneConfig, max_epochs: int) -> Any:
    """Median or Hyperband on the per-epoch metric; none for multi-objective studies."""
    import optuna

    if len(tc.objectives) > 1 or tc.pruner == "none":
        if len(tc.objectives) > 1 and tc.pruner != "none":
            log.info("pruning is off: Optuna does not prune multi-objective studies")
        return optuna.pruners.NopPruner()
    if tc.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1))
    return optuna.pruners.MedianPruner(
        n_startup_trials=tc.startup_trials, n_warmup_steps=tc.warmup_epochs
    )


def load_study(exp: ExperimentConfig, out_dir: Path, storage: str | None = None) -> Any:
    """Create the study, or load it when it exists in the storage (to continue it)."""
    import optuna

    tc = _tune(exp)
    cell = base_cell(exp)
    url = storage or tc.storage or default_storage(out_dir)
    with brief_lock(_creation_lock(url, out_dir), what="Optuna storage"):
        study = optuna.create_study(
            study_name=tc.study_name or exp.name,
            storage=_storage(url),
            directions=[o.direction for o in tc.objectives],
            sampler=make_sampler(tc),
            pruner=make_pruner(tc, cell.finetune.train.epochs),
            load_if_exists=True,
        )
    if study.trials:
        # The sampler's random state is not stored: seeded as in the first invocation, it
        # would suggest that invocation's (random start-up) parameters again.
        study.sampler = make_sampler(tc, offset=len(study.trials))
    return study


def _creation_lock(url: str, out_dir: Path) -> Path:
    """Beside a SQLite file (the race is in creating its schema), else in the output folder."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        return db.with_name(f".{db.name}.lock")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / ".vilalign-study.lock"


def _storage(url: str) -> Any:
    """An RDB storage with heartbeats: a trial of a killed worker on another host is failed
    after :data:`GRACE_S` seconds of silence and queued again."""
    import warnings

    import optuna

    try:
        if url.startswith("sqlite:///"):  # (a kill while creating it leaves nothing half-made)
            create_sqlite(url, _close_after(optuna.storages.RDBStorage))
        with warnings.catch_warnings():  # (heartbeats are "experimental" since Optuna 2.8)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as err:  # sqlalchemy / alembic: pages of traceback otherwise
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise OSError(f"Optuna storage {url} cannot be opened ({first})") from None


def _close_after(storage_class: Any) -> Any:
    def create(url: str) -> None:
        storage_class(url).engine.dispose()  # (tables created; the file is renamed next)

    return create


def original_number(trial: Any) -> int:
    """The trial's number, or for a retry of a killed worker's trial, the original's (its
    folder, with the checkpoints to resume from)."""
    attrs = getattr(trial, "system_attrs", None)  # (a live Trial does not expose them)
    if attrs is None:
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    return int(attrs.get("failed_trial", trial.number))


def trial_dir(out_dir: Path, number: int) -> Path:
    return out_dir / "trials" / f"trial_{number:04d}"


def requeue_dead_trials(study: Any, workers_dir: Path) -> list[int]:
    """Fail and queue again every RUNNING trial whose worker (as it recorded itself) no
    longer holds its lock; returns their numbers. Done under the study's lock, so two
    workers never queue one trial twice."""
    import optuna
    from optuna.trial import TrialState

    done = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR) or {}
        if worker.get("trial") != trial.number or is_held(workers_dir / worker["name"]):
            continue  # (not claimed yet, or its worker is alive)
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile
        callback = study._storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, study._storage.get_trial(trial._trial_id))
        done.append(trial.number)
    if done:
        log.warning("trials %s: their worker was killed; failed and queued again", done)
    return done


def _tune(exp: ExperimentConfig) -> TuneConfig:
    if exp.tune is None:
        raise ValueError(f"experiment {exp.name!r}: no 'tune' section (search space, objectives)")
    if not exp.tune.space:
        raise ValueError(f"experiment {exp.name!r}: tune.space declares no parameters")
    return exp.tune


# ---------------------------------------------------------------------------- one trial


def suggest(trial: Any, path: str, space: ParamSpace) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(path, space.choices)
    if space.type == "int":
        step = int(space.step or 1)
        return trial.suggest_int(path, int(space.low), int(space.high), step=step, log=space.log)
    return trial.suggest_float(path, space.low, space.high, step=space.step, log=space.log)


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"finetune.optim.lr": 1e-4}`` → ``{"finetune": {"optim": {"lr": 1e-4}}}``."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def with_params(exp: ExperimentConfig, params: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment with searched values merged into model / pretrain / finetune."""
    data = deep_merge(json.loads(exp.model_dump_json()), nested(params))
    return validate(ExperimentConfig, data, source=f"experiment {exp.name!r} with {dict(params)}")


def base_cell(exp: ExperimentConfig, dataset: str | None = None) -> Cell:
    """The first cell of the grid (first value of every axis), or the first on ``dataset``."""
    cells = expand_grid(exp)
    if dataset is None:
        return cells[0]
    for cell in cells:
        if cell.finetune.data.name == dataset or cell.labels.get("dataset") == dataset:
            return cell
    raise ValueError(f"tune: objective dataset {dataset!r} is not in the grid's datasets")


class PruningCallback:
    """Reports the per-epoch metric to the trial; stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, ctx: EpochContext) -> None:
        import optuna

        if self.metric not in ctx.metrics:
            raise KeyError(
                f"tune.prune_metric: {self.metric!r} is not reported per epoch; "
                f"available: {', '.join(sorted(ctx.metrics))}"
            )
        self.trial.report(float(ctx.metrics[self.metric]), ctx.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {ctx.epoch}: {self.metric}={ctx.metrics[self.metric]}")


def objective_value(spec: ObjectiveSpec, result: RunResult, monitor: str) -> float:
    """``test/...`` from the test evaluation; anything else from the epoch kept as best
    (``monitor``: the metric the run kept its best weights by)."""
    test = spec.metric.startswith("test/")
    source = result.test_metrics if test else best_epoch(result, monitor)
    if spec.metric not in source:
        raise KeyError(
            f"tune.objectives: metric {spec.metric!r} not reported; "
            f"available: {', '.join(sorted(source))}"
        )
    return float(source[spec.metric])


def best_epoch(result: RunResult, monitor: str) -> dict[str, float]:
    """The history row whose weights were kept, else the last.

    That is the first row where ``monitor`` reached the best value (a later equal value is
    not an improvement). Only ``monitor`` is compared: another metric, or the epoch
    number, may hold the same number in an earlier row.
    """
    history = result.fit.history
    best = result.fit.best_value
    for row in history:
        if best is not None and row.get(monitor) == best:
            return row
    return history[-1] if history else {}


def monitored_metric(cfg: FinetuneConfig, history: list[dict[str, float]]) -> str:
    """The metric a fine-tuning run keeps its best weights by (as the training loop picks
    it): ``train.monitor``, else the task's metric on val, else the training loss."""
    if cfg.train.monitor:
        return cfg.train.monitor
    name = f"val/{task_spec(cfg.task_name).monitor}"
    return name if any(name in row for row in history) else "train/loss"


class Objective:
    """Callable for ``study.optimize``: one trial = pretrain (if any) + fine-tune per dataset."""

    def __init__(self, exp: ExperimentConfig, out_dir: Path, worker: str = "") -> None:
        self.exp, self.out_dir, self.tc = exp, out_dir, _tune(exp)
        self.worker = worker  # this worker's folder under workers/ (held while it runs)

    def __call__(self, trial: Any) -> float | list[float]:
        if self.worker:  # (the trial's number: a retry inherits its original's attributes)
            claim = {"name": self.worker, "trial": trial.number}
            trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, claim)
        params = {p: suggest(trial, p, s) for p, s in self.tc.space.items()}
        exp = with_params(self.exp, params)
        folder = trial_dir(self.out_dir, original_number(trial))
        results: dict[str | None, tuple[RunResult, str]] = {}
        values = []
        for i, spec in enumerate(self.tc.objectives):
            if spec.dataset not in results:
                prune = len(self.tc.objectives) == 1 and i == 0
                result = self._run(trial, exp, spec, folder, prune)
                cfg = base_cell(exp, spec.dataset).finetune
                results[spec.dataset] = (result, monitored_metric(cfg, result.fit.history))
            values.append(objective_value(spec, *results[spec.dataset]))
        return values[0] if len(values) == 1 else values

    def _run(
        self, trial: Any, exp: ExperimentConfig, spec: ObjectiveSpec, trial_dir: Path, prune: bool
    ) -> RunResult:
        cell = base_cell(exp, spec.dataset)
        run_dir = trial_dir / cell.key
        init_from = None
        if cell.pretrain is not None:
            pt_dir = run_dir / "pretrain"
            run_pretraining(cell.pretrain, pt_dir, resume=prepare_stage(pt_dir))
            init_from = pt_dir
        callbacks: list[Any] = []
        metrics = [o.metric for o in self.tc.objectives] + [self.tc.prune_metric or ""]
        if any(m.startswith("align/") for m in metrics):
            callbacks.append(alignment_callback(exp, cell, run_dir / "alignment"))
        if prune:
            callbacks.append(PruningCallback(trial, self.tc.prune_metric or spec.metric))
        ft_dir = run_dir / "finetune"
        return run_finetuning(
            cell.finetune, ft_dir, init_from=init_from, resume=prepare_stage(ft_dir),
            callbacks=callbacks,
        )  # fmt: skip


# ---------------------------------------------------------------------------- the study


def run_study(
    exp: ExperimentConfig,
    out_dir: str | Path | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> TuneResult:
    """Run (or continue) the study; write trials.csv and the best configuration(s)."""
    tc = _tune(exp)
    out = Path(out_dir) if out_dir is not None else exp.resolved_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    worker = f"{socket.gethostname()}-{os.getpid()}"
    with folder_lock(out / WORKERS_DIR / worker, "worker"):
        study = load_study(exp, out, storage)
        before = len(study.trials)
        reap = _reaper(out)
        reap(study, None)
        study.optimize(
            Objective(exp, out, worker),
            n_trials=n_trials or tc.n_trials,
            timeout=timeout or tc.timeout,
            catch=(NonFiniteLossError,),  # a diverged trial fails; the study goes on
            callbacks=[reap],
        )
    # Left cleanly: no trial of this worker is RUNNING, nobody needs its lock any more.
    shutil.rmtree(out / WORKERS_DIR / worker, ignore_errors=True)
    log.info(
        "study %s: %d trials now (%d new)",
        study.study_name,
        len(study.trials),
        len(study.trials) - before,
    )
    return TuneResult(
        study, out, len(study.trials), best_trials(study), write_outputs(exp, study, out)
    )


def _reaper(out: Path) -> Any:
    """A study callback (also called at the start): queue again the trials of killed
    workers, one worker at a time."""

    def reap(study: Any, trial: Any) -> None:
        with brief_lock(out / ".vilalign-study.lock", what="study"):
            requeue_dead_trials(study, out / WORKERS_DIR)

    return reap


def best_trials(study: Any) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (several)."""
    try:
        trials = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    except ValueError:  # no completed trial yet
        return []
    return [{"number": t.number, "values": list(t.values), "params": t.params} for t in trials]


def write_outputs(exp: ExperimentConfig, study: Any, out: Path) -> list[Path]:
    """trials.csv; best_experiment.yaml + best_finetune.yaml, or pareto_front.csv and one
    experiment file per Pareto-optimal trial."""
    files = [out / TRIALS_FILE]
    study.trials_dataframe().to_csv(files[0], index=False)
    best = best_trials(study)
    if not best:
        return files
    if len(study.directions) == 1:
        files += write_best(exp, best[0]["params"], out / BEST_FILE, out / BEST_RUN_FILE)
        return files
    front = pd.DataFrame(
        [{"trial": b["number"], **_values(exp, b["values"]), **b["params"]} for b in best]
    )
    front.to_csv(out / PARETO_FILE, index=False)
    files.append(out / PARETO_FILE)
    for b in best:
        files += write_best(exp, b["params"], out / "pareto" / f"trial_{b['number']:04d}.yaml")
    return files


def _values(exp: ExperimentConfig, values: list[float]) -> dict[str, float]:
    specs = _tune(exp).objectives
    return {
        f"{s.metric}" + (f"@{s.dataset}" if s.dataset else ""): v
        for s, v in zip(specs, values, strict=True)
    }


def write_best(
    exp: ExperimentConfig, params: Mapping[str, Any], path: Path, run_path: Path | None = None
) -> list[Path]:
    """The experiment with ``params`` applied (for ``vilalign run``) and, optionally, the
    base cell's fine-tuning run file (for ``vilalign finetune``)."""
    best = with_params(exp, params)
    data = json.loads(best.model_dump_json())
    data["description"] = (data.get("description", "") + f" Tuned: {dict(params)}").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    files = [path]
    if run_path is not None:
        run = json.loads(base_cell(best).finetune.model_dump_json())
        run_path.write_text(yaml.safe_dump(run, sort_keys=False))
        files.append(run_path)
    return files

"""The run store: every pretraining and fine-tuning run of an experiment in MLflow.

A local SQLite store (``sqlite:///<output_dir>/mlflow.db``, artifacts beside it in
``mlartifacts/``) by default; any tracking URI (a team server) with ``--tracking-uri``.
Each run records its parameters (the resolved config, flattened, and the cell's axis
labels), the metrics of every log call and epoch (losses, val metrics, per-layer
alignment values ``align/<layer>/<view>/<measure>``), the git commit, and — when the
stage is finished — its artifacts (config, results, metric files, plots, tables).

The run folder's own files are still written (the tracker tees into a ``FileTracker``):
the report and a resumed run read them. A resumed run continues the same MLflow run
(found by its folder tag); records it repeats after the checkpoint are logged again at
the same steps, as MLflow's metric history cannot be rewound.

View it with ``mlflow ui --backend-store-uri sqlite:///runs/<name>/mlflow.db``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vilalign.experiments.spec import Cell, ExperimentConfig
from vilalign.train.tracker import FileTracker

log = logging.getLogger(__name__)

RUN_DIR_TAG = "vilalign.run_dir"
MAX_PARAM = 6000  # MLflow's limit on a parameter value's length
ARTIFACT_GLOBS = ("*.json", "*.csv", "*.png", "*.html", "*.parquet", "*.jsonl")


def default_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` with values as strings (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class MlflowTracker:
    """A :class:`~vilalign.train.tracker.Tracker` that writes to MLflow and the run folder."""

    def __init__(self, client: Any, run_id: str, run_dir: Path) -> None:
        self.client, self.run_id = client, run_id
        self.files = FileTracker(run_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.files.log_params(params)
        self._params(flatten(params))

    def _params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        items = [Param(k[:250], v[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            try:
                self.client.log_batch(self.run_id, params=items[i : i + 100])
            except MlflowException as err:  # a resumed run logs the same params again
                log.debug("params not re-logged: %s", err)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        from mlflow.entities import Metric

        self.files.log_metrics(metrics, step, epoch)
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        items.append(Metric("epoch", float(epoch), now, int(step)))
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def rewind(self, step: int) -> None:
        self.files.rewind(step)
        self.client.set_tag(self.run_id, "vilalign.resumed_at_step", str(step))

    def plot(self) -> Path | None:
        return self.files.plot()

    def close(self) -> None:
        self.files.close()


class RunStore:
    """One MLflow experiment; hands out trackers per run folder and finishes runs."""

    def __init__(self, uri: str, experiment: str, artifact_dir: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(experiment, location)
        self.commit = git_commit()

    def find_run(self, run_dir: Path) -> str | None:
        """The MLflow run recorded for this folder, if any (to continue it on resume)."""
        path = str(run_dir.resolve())
        quote = next((q for q in ("'", '"') if q not in path), None)
        if quote is not None:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{path}{quote}",
                max_results=1,
            )
            return runs[0].info.run_id if runs else None
        # Both quote characters in the path: MLflow's filter has no escape; compare here.
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], page_token=token)
            for run in page:
                if run.data.tags.get(RUN_DIR_TAG) == path:
                    return run.info.run_id
            token = page.token
            if not token:
                return None

    def tracker(
        self, run_dir: Path, name: str, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> MlflowTracker:
        run_id = self.find_run(run_dir)
        if run_id is None:
            all_tags = {RUN_DIR_TAG: str(run_dir.resolve()), **tags}
            if self.commit:
                all_tags.update(
                    {"git_commit": self.commit, "mlflow.source.git.commit": self.commit}
                )
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        tracker = MlflowTracker(self.client, run_id, run_dir)
        tracker._params(flatten(params))
        return tracker

    def finish(self, run_dir: Path, extra: Iterable[Path] = ()) -> None:
        """Upload the run's files (and ``extra`` folders) and mark the run finished."""
        run_id = self.find_run(run_dir)
        if run_id is None:
            return
        for folder in (run_dir, *extra):
            files = [p for g in ARTIFACT_GLOBS for p in folder.glob(g)] if folder.is_dir() else []
            for path in files:
                sub = None if folder == run_dir else folder.name
                self.client.log_artifact(run_id, str(path), artifact_path=sub)
        self.client.set_terminated(run_id, "FINISHED")


class ExperimentTracking:
    """What the runner calls: a tracker per stage, and ``finish`` when a stage is done."""

    def __init__(self, store: RunStore, exp: ExperimentConfig) -> None:
        self.store, self.exp = store, exp

    def __call__(self, stage: str, cell: Cell, run_dir: Path) -> MlflowTracker:
        cfg = cell.finetune if stage == "finetune" else cell.pretrain
        name = cell.key if stage == "finetune" else f"pretrain/{cell.pretrain_key}"
        tags = {"stage": stage, "cell": cell.key, "group": cell.group, "experiment": self.exp.name}
        tags.update({f"axis.{k}": v for k, v in cell.labels.items()})
        params = {"cell": dict(cell.labels), "config": json.loads(cfg.model_dump_json())}
        return self.store.tracker(run_dir, name, tags, params)

    def finish(self, run_dir: Path, extra: Iterable[Path] = ()) -> None:
        self.store.finish(run_dir, extra)


def tracker_factory(
    exp: ExperimentConfig, out_dir: str | Path, uri: str | None = None
) -> ExperimentTracking | None:
    """MLflow tracking for ``exp`` unless its file turns it off (a URI turns it on)."""
    if not (exp.tracking.enabled or uri):
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = uri or exp.tracking.uri or default_uri(out_dir)
    store = RunStore(uri, exp.tracking.experiment or exp.name, out_dir / "mlartifacts")
    log.info("tracking runs in MLflow at %s", uri)
    return ExperimentTracking(store, exp)

"""The run store: every pretraining and fine-tuning run of an experiment in MLflow.

A local SQLite store (``sqlite:///<output_dir>/mlflow.db``, artifacts beside it in
``mlartifacts/``) by default; any tracking URI (a team server) with ``--tracking-uri``.
Each run records its parameters (the resolved config, flattened, and the cell's axis
labels), the metrics of every log call and epoch (losses, val metrics, per-layer
alignment values ``align/<layer>/<view>/<measure>``), MLflow's standard source tags
(``mlflow.source.name``/``type``, ``mlflow.source.git.commit``/``branch``/``repoURL``,
``mlflow.user``) and — when the stage is finished — its artifacts (config, results,
metric files, plots, tables) and the exported model (``model/``).

A grid cell is a parent run with its pretraining and fine-tuning runs nested under it
(``mlflow.parentRunId``; a pretraining run shared by several cells is nested under the
first and named by the others' ``vilalign.pretrain_run`` tag). The commands that read a
checkpoint (``analyse``, ``attention``, ``explain``) log their tables and figures into
the run that wrote it (:func:`log_analysis`).

Every attempt at a run folder is an MLflow run of its own. The folder records the latest
in ``mlflow.json``; a new attempt closes an earlier one left RUNNING as KILLED (the
folder's lock says its process is gone) and, when it resumes from a checkpoint, copies in
the records up to that checkpoint, so the finished run holds the whole history once. The
run folder's own files are still written (the tracker tees into a ``FileTracker``): the
report and a resumed run read them.

View it with ``mlflow ui --backend-store-uri sqlite:///runs/<name>/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vilalign import __version__
from vilalign.experiments.spec import Cell, ExperimentConfig
from vilalign.io import write_atomic, write_json_atomic
from vilalign.locks import brief_lock
from vilalign.train.tracker import FileTracker

log = logging.getLogger(__name__)

RUN_DIR_TAG = "vilalign.run_dir"
RUN_RECORD = "mlflow.json"  # in a tracked folder: the store and the run of its latest attempt
MAX_PARAM = 6000  # MLflow's limit on a parameter value's length
ARTIFACT_GLOBS = ("*.json", "*.csv", "*.png", "*.html", "*.parquet", "*.jsonl")
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
GIT_REPO_URL = "mlflow.source.git.repoURL"
USER = "mlflow.user"
PARENT_RUN_ID = "mlflow.parentRunId"


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


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that runs: the git work tree holding the vilalign package
    (an editable install), else ``cwd``'s; None outside one."""
    return _git(_code_dir(cwd), "rev-parse", "HEAD")


def _code_dir(cwd: str | Path | None) -> Path:
    import vilalign

    return Path(cwd) if cwd is not None else Path(vilalign.__file__).resolve().parent


def source_tags(command: str = "vilalign") -> dict[str, str]:
    """MLflow's standard source tags for a run started by ``command``."""
    tags = {SOURCE_NAME: command, SOURCE_TYPE: "LOCAL", "vilalign.version": __version__}
    with contextlib.suppress(Exception):  # (no user name in some containers)
        tags[USER] = getpass.getuser()
    where = _code_dir(None)
    commit = _git(where, "rev-parse", "HEAD")
    if commit:
        tags[GIT_COMMIT] = commit
        branch = _git(where, "rev-parse", "--abbrev-ref", "HEAD")
        url = _git(where, "config", "--get", "remote.origin.url")
        tags.update({k: v for k, v in ((GIT_BRANCH, branch), (GIT_REPO_URL, url)) if v})
    return tags


# ---------------------------------------------------------------------------- the store


def _sqlite_folder(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None


def open_client(uri: str) -> Any:
    """An MlflowClient whose store is known to open, or one line naming the store.

    A new SQLite store is created under a lock beside it (several processes opening it at
    the same moment would race in its schema migration), and migrated in a temporary file
    renamed into place (a process killed during the migration, which takes seconds, would
    leave a half-migrated store that no later run can open). Its folder must be writable
    (SQLite writes a journal beside the file), checked before anything else.
    """
    from mlflow.tracking import MlflowClient

    folder = _sqlite_folder(uri)
    guard = contextlib.nullcontext()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        guard = brief_lock(folder / ".vilalign-mlflow.lock", what="MLflow store")
    try:
        with guard:
            if folder is not None:
                create_sqlite(uri, lambda tmp: MlflowClient(tmp).search_experiments(max_results=1))
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # opens (and creates) the store now
    except OSError as err:
        raise OSError(f"MLflow tracking store {uri}: {err}; or pass --no-tracking") from None
    except Exception as err:  # MlflowException, sqlalchemy errors: 100+ lines otherwise
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        where = f"is {folder} writable? " if folder is not None else ""
        raise OSError(
            f"MLflow tracking store {uri} cannot be opened ({first}); {where}use another "
            "--tracking-uri or --no-tracking"
        ) from None
    return client


def create_sqlite(uri: str, create: Callable[[str], Any]) -> None:
    """Create the SQLite database of ``uri`` unless it exists: ``create(tmp_uri)`` fills a
    temporary file beside it, which is then renamed into place (whole or not at all)."""
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists():
        write_atomic(db, lambda tmp: create(f"sqlite:///{tmp}"))


def read_record(folder: str | Path) -> dict[str, str] | None:
    """The tracking record of a run (or cell) folder: {tracking_uri, experiment_id, run_id}."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    with contextlib.suppress(ValueError):
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and "run_id" in data else None
    return None


def log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """Flat string params into a run (a param logged before is left as it was)."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    items = [Param(k[:250], v[:MAX_PARAM]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        try:
            client.log_batch(run_id, params=items[i : i + 100])
        except MlflowException as err:  # the same params logged again
            log.debug("params not re-logged: %s", err)


def log_records(client: Any, run_id: str, records: Iterable[Mapping[str, float]]) -> None:
    """Metric records ``{"step": ..., name: value, ...}`` into a run, at their steps."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = []
    for r in records:
        step = int(r["step"])
        items += [Metric(k, float(v), now, step) for k, v in r.items() if k != "step"]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


class MlflowTracker:
    """A :class:`~vilalign.train.tracker.Tracker` that writes to MLflow and the run folder."""

    def __init__(self, client: Any, run_id: str, run_dir: Path) -> None:
        self.client, self.run_id = client, run_id
        self.files = FileTracker(run_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.files.log_params(params)
        self._params(flatten(params))

    def _params(self, params: Mapping[str, str]) -> None:
        log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        self.files.log_metrics(metrics, step, epoch)
        log_records(self.client, self.run_id, [{"step": step, "epoch": epoch, **metrics}])

    def mark(self) -> int:
        return self.files.mark()

    def rewind(self, step: int, mark: int | None = None) -> None:
        """The run folder's files go back to the checkpoint; this attempt's MLflow run,
        new, gets the records kept (its predecessor was closed as KILLED)."""
        self.files.rewind(step, mark)
        log_records(self.client, self.run_id, self.files.records())
        if step:  # (step 0: a fresh start over the records of an attempt with no checkpoint)
            self.client.set_tag(self.run_id, "vilalign.resumed_at_step", str(step))

    def plot(self) -> Path | None:
        return self.files.plot()

    def close(self) -> None:
        self.files.close()


class RunStore:
    """One MLflow experiment; hands out trackers per run folder and finishes runs."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_dir: Path | None = None,
        command: str = "vilalign",
    ) -> None:
        self.uri = uri
        self.client = open_client(uri)
        folder = _sqlite_folder(uri)
        if artifact_dir is None and folder is not None:
            # (MLflow's default is ./mlruns under the working directory, wherever that is)
            artifact_dir = folder / "mlartifacts"
        self.experiment_id = self._experiment(experiment, artifact_dir)
        self.tags = source_tags(command)
        self.commit = self.tags.get(GIT_COMMIT)

    def _experiment(self, name: str, artifact_dir: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
        try:
            return self.client.create_experiment(name, location)
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def find_run(self, run_dir: Path) -> str | None:
        """The MLflow run of this folder's latest attempt, if any."""
        record = read_record(run_dir)
        if record is not None and record.get("tracking_uri") == self.uri:
            return record["run_id"]
        return self._search(str(run_dir.resolve()))

    def _search(self, path: str) -> str | None:
        order = ["attributes.start_time DESC"]
        quote = next((q for q in ("'", '"') if q not in path), None)
        if quote is not None:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{path}{quote}",
                max_results=1,
                order_by=order,
            )
            return runs[0].info.run_id if runs else None
        # Both quote characters in the path: MLflow's filter has no escape; compare here.
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], page_token=token, order_by=order)
            for run in page:
                if run.data.tags.get(RUN_DIR_TAG) == path:
                    return run.info.run_id
            token = page.token
            if not token:
                return None

    def start(
        self,
        folder: Path,
        name: str,
        tags: Mapping[str, str],
        parent: str | None = None,
    ) -> str:
        """A new MLflow run for an attempt at ``folder`` (the caller holds its lock): an
        earlier attempt left RUNNING is closed as KILLED and named by the new one."""
        folder.mkdir(parents=True, exist_ok=True)
        all_tags = {**self.tags, RUN_DIR_TAG: str(folder.resolve()), **tags}
        if parent is not None:
            all_tags[PARENT_RUN_ID] = parent
        earlier = self.find_run(folder)
        if earlier is not None:
            all_tags["vilalign.previous_attempt"] = earlier
            self._close_if_running(earlier, "KILLED")
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        record = {"tracking_uri": self.uri, "experiment_id": self.experiment_id}
        write_json_atomic(folder / RUN_RECORD, {**record, "run_id": run.info.run_id})
        return run.info.run_id

    def _close_if_running(self, run_id: str, status: str) -> None:
        with contextlib.suppress(Exception):  # (deleted, or in another store)
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status)
                log.info("MLflow run %s of a killed attempt closed as %s", run_id, status)

    def tracker(
        self,
        run_dir: Path,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        parent: str | None = None,
    ) -> MlflowTracker:
        """A tracker writing to a new MLflow run for this attempt at ``run_dir``."""
        run_id = self.start(run_dir, name, tags, parent)
        tracker = MlflowTracker(self.client, run_id, run_dir)
        tracker._params(flatten(params))
        return tracker

    def finish(self, run_dir: Path, extra: Iterable[Path] = ()) -> None:
        """Upload the run's files, its ``model/`` and ``extra`` folders; mark it finished
        (once: a run finished already, e.g. a pretraining run shared by cells, is left)."""
        run_id = self.find_run(run_dir)
        if run_id is None or self.client.get_run(run_id).info.status == "FINISHED":
            return
        for folder in (run_dir, *extra):
            files = [p for g in ARTIFACT_GLOBS for p in folder.glob(g)] if folder.is_dir() else []
            for path in files:
                if path.name == RUN_RECORD:
                    continue
                sub = None if folder == run_dir else folder.name
                self.client.log_artifact(run_id, str(path), artifact_path=sub)
        model = run_dir / "model"
        if model.is_dir():
            self.client.log_artifacts(run_id, str(model), artifact_path="model")
        self.client.set_terminated(run_id, "FINISHED")


class ExperimentTracking:
    """What the runner calls: a parent run per cell, a tracker per stage, and ``finish``
    when a stage is done."""

    def __init__(self, store: RunStore, exp: ExperimentConfig) -> None:
        self.store, self.exp = store, exp
        self.parents: dict[str, str] = {}  # cell key -> its parent run

    def cell_started(self, cell: Cell, cell_dir: Path) -> None:
        """The cell's parent run: its earlier one (a rerun continues it) or a new one."""
        record = read_record(cell_dir)
        run_id = record["run_id"] if record and record["tracking_uri"] == self.store.uri else None
        if run_id is None:
            tags = {"stage": "cell", **self._tags(cell)}
            run_id = self.store.start(cell_dir, cell.key, tags)
        else:
            self.store.client.update_run(run_id, status="RUNNING")
        self.parents[cell.key] = run_id
        params = {"cell": dict(cell.labels), "settings_hash": cell.settings_hash}
        log_params(self.store.client, run_id, flatten(params))

    def pretrain_used(self, cell: Cell, pt_dir: Path) -> None:
        """Name the (shared) pretraining run in the cell's parent run."""
        record, parent = read_record(pt_dir), self.parents.get(cell.key)
        if record is not None and parent is not None:
            self.store.client.set_tag(parent, "vilalign.pretrain_run", record["run_id"])

    def cell_finished(self, cell: Cell, cell_dir: Path) -> None:
        run_id = self.parents.get(cell.key)
        if run_id is None:
            return
        done = json.loads((cell_dir / "done.json").read_text())
        metrics = {k: v for k, v in done.get("test", {}).items() if isinstance(v, int | float)}
        if metrics:
            log_records(self.store.client, run_id, [{"step": 0, **metrics}])
        for name in ("done.json", "cell.json"):
            self.store.client.log_artifact(run_id, str(cell_dir / name))
        self.store.client.set_terminated(run_id, "FINISHED")

    def _tags(self, cell: Cell) -> dict[str, str]:
        tags = {"cell": cell.key, "group": cell.group, "experiment": self.exp.name}
        tags.update({f"axis.{k}": v for k, v in cell.labels.items()})
        return tags

    def __call__(self, stage: str, cell: Cell, run_dir: Path) -> MlflowTracker:
        cfg = cell.finetune if stage == "finetune" else cell.pretrain
        name = cell.key if stage == "finetune" else f"pretrain/{cell.pretrain_key}"
        tags = {"stage": stage, **self._tags(cell)}
        params = {"cell": dict(cell.labels), "config": json.loads(cfg.model_dump_json())}
        return self.store.tracker(run_dir, name, tags, params, self.parents.get(cell.key))

    def finish(self, run_dir: Path, extra: Iterable[Path] = ()) -> None:
        self.store.finish(run_dir, extra)


def tracker_factory(
    exp: ExperimentConfig,
    out_dir: str | Path,
    uri: str | None = None,
    command: str = "vilalign run",
) -> ExperimentTracking | None:
    """MLflow tracking for ``exp`` unless its file turns it off (a URI turns it on)."""
    if not (exp.tracking.enabled or uri):
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = uri or exp.tracking.uri or default_uri(out_dir)
    store = RunStore(uri, exp.tracking.experiment or exp.name, out_dir / "mlartifacts", command)
    log.info("tracking runs in MLflow at %s", uri)
    return ExperimentTracking(store, exp)


# ---------------------------------------------------------------------------- analyses


def checkpoint_record(checkpoint: str | Path | None) -> dict[str, str] | None:
    """The tracking record of the run that wrote ``checkpoint`` (a run folder, or its
    ``model/``), if it was tracked."""
    if checkpoint is None:
        return None
    folder = Path(checkpoint)
    return read_record(folder) or read_record(folder.parent)


def log_analysis(
    out_dir: str | Path,
    command: str,
    params: Mapping[str, Any],
    checkpoint: str | Path | None = None,
    uri: str | None = None,
    experiment: str = "vilalign",
) -> str | None:
    """Log an analysis folder's tables and figures into the MLflow run of ``checkpoint``
    when it has one (under ``<command>/<folder name>/``), else, when ``uri`` is given,
    into a new run of ``experiment``. Returns the run id (None: nothing logged)."""
    record = checkpoint_record(checkpoint)
    if record is None and uri is None:
        return None
    out_dir = Path(out_dir)
    where = f"{command}/{out_dir.name}"
    if record is not None and uri in (None, record["tracking_uri"]):
        client, run_id = open_client(record["tracking_uri"]), record["run_id"]
    else:
        store = RunStore(str(uri), experiment, command=f"vilalign {command}")
        run_id = store.start(out_dir, where, {"stage": command})
        client = store.client
        log_params(client, run_id, flatten(params))
    # (the arguments as a file too: a run analysed twice keeps both, params keep the first)
    client.log_dict(run_id, dict(params), f"{where}/arguments.json")
    for path in sorted(p for g in ARTIFACT_GLOBS for p in out_dir.glob(g)):
        if path.name != RUN_RECORD:
            client.log_artifact(run_id, str(path), artifact_path=where)
    if record is None:
        client.set_terminated(run_id, "FINISHED")
    return run_id


@contextlib.contextmanager
def closing_on_error(store: RunStore, run_id: str) -> Iterator[None]:
    """Mark the run KILLED (Ctrl-C) or FAILED when the block raises."""
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        store.client.set_terminated(run_id, status)
        raise

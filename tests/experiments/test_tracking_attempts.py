"""The run store across kills: every attempt an MLflow run, a killed one closed as KILLED on
the rerun, the finished one complete and once; analyses logged into their checkpoint's run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from vilalign.experiments.tracking import (
    RUN_RECORD,
    RunStore,
    default_uri,
    log_analysis,
    read_record,
)


def test_attempts_kills_and_analyses(tmp_path, mlflow_uri):
    uri = mlflow_uri
    store = RunStore(uri, "attempts", command="vilalign finetune")
    run_dir = tmp_path / "run"
    killed = store.tracker(run_dir, "run", {"stage": "finetune"}, {"lr": 1e-4})
    for step in (1, 2, 3):
        killed.log_metrics({"train/loss": 1.0 / step}, step, 1)
    # ... the process is killed here; the rerun resumes from a checkpoint at step 2:
    again = store.tracker(run_dir, "run", {"stage": "finetune"}, {"lr": 1e-4})
    again.rewind(2, mark=2)
    again.log_metrics({"train/loss": 0.3}, 3, 1)
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.safetensors").write_bytes(b"weights")
    (run_dir / "results.json").write_text("{}")
    store.finish(run_dir)
    store.finish(run_dir)  # a second finish (a rerun of a finished stage) adds nothing

    client = MlflowClient(tracking_uri=uri)
    first, second = client.get_run(killed.run_id), client.get_run(again.run_id)
    assert first.info.status == "KILLED" and second.info.status == "FINISHED"
    assert second.data.tags["vilalign.previous_attempt"] == killed.run_id
    assert second.data.tags["mlflow.source.name"] == "vilalign finetune"
    history = client.get_metric_history(again.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.3)]  # once each
    artifacts = {a.path for a in client.list_artifacts(again.run_id)}
    assert {"results.json", "model"} <= artifacts and RUN_RECORD not in artifacts
    assert read_record(run_dir)["run_id"] == again.run_id

    # An analysis of the run's model goes into that run ...
    out = tmp_path / "analyse"
    out.mkdir()
    (out / "alignment.csv").write_text("layer,value\nfusion.0,0.5\n")
    assert log_analysis(out, "analyse", {"n_samples": "8"}, run_dir / "model") == again.run_id
    logged = {a.path for a in client.list_artifacts(again.run_id, "analyse/analyse")}
    assert {"analyse/analyse/alignment.csv", "analyse/analyse/arguments.json"} <= logged
    # ... one of an untracked model into a new run when a store is named, else nowhere.
    assert log_analysis(out, "analyse", {}, tmp_path / "elsewhere") is None
    new = log_analysis(out, "analyse", {}, tmp_path / "elsewhere", uri=uri)
    assert client.get_run(new).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.3, 1.0, 2.0])
def test_a_store_whose_creation_was_killed_opens_on_the_rerun(tmp_path, after_s):
    """Killed while MLflow migrates a new SQLite store (seconds): earlier versions left a
    half-migrated mlflow.db ("table jobs already exists") that no rerun could open."""
    import os
    import signal
    import time

    from vilalign.experiments.tracking import open_client

    uri = default_uri(tmp_path)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, killed while it creates the store
        open_client(uri)
        os._exit(0)
    time.sleep(after_s)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert open_client(uri).search_experiments() is not None

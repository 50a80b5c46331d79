"""The MLflow run store: params, per-epoch metrics, per-layer alignment, artifacts and the
git commit are recorded, and can be queried back."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from tests.experiments.conftest import tiny_experiment
from vilalign.experiments.runner import run_experiment
from vilalign.experiments.tracking import default_uri, flatten, tracker_factory


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "null"
    }  # fmt: skip


def test_runs_are_recorded_and_queryable(tmp_path, mlflow_uri):  # (the store: a fresh copy)
    exp = tiny_experiment(
        tmp_path, grid={"pretraining": ["mlm+ap"]}, tracking={"enabled": True},
        analysis={"attention": False},
    )  # fmt: skip
    factory = tracker_factory(exp, tmp_path)
    assert factory is not None
    run_experiment(exp, tracker_factory=factory, progress=False)

    client = MlflowClient(tracking_uri=default_uri(tmp_path))
    experiment = client.get_experiment_by_name("tiny-grid")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"cell", "pretrain", "finetune"}
    # a parent run per grid cell, its pretraining and fine-tuning runs nested under it
    cell = runs["cell"]
    for stage in ("pretrain", "finetune"):
        assert runs[stage].data.tags["mlflow.parentRunId"] == cell.info.run_id
    assert cell.info.status == "FINISHED" and "test/accuracy" in cell.data.metrics
    ft = runs["finetune"]
    assert ft.info.status == "FINISHED"
    assert ft.data.params["config.optim.lr"] == str(exp.finetune.get("optim", {}).get("lr", 1e-4))
    assert ft.data.params["cell.pretraining"] == "mlm+ap"
    assert ft.data.tags["axis.baseline"] == "vilbert"
    # MLflow's standard source tags, not a tag of our own
    assert ft.data.tags["mlflow.source.name"] == "vilalign run"
    assert ft.data.tags["mlflow.source.type"] == "LOCAL"
    assert len(ft.data.tags.get("mlflow.source.git.commit", "")) in (0, 40)
    assert "git_commit" not in ft.data.tags
    history = client.get_metric_history(ft.info.run_id, "val/accuracy")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) == 2
    assert "test/accuracy" in ft.data.metrics
    align = [k for k in ft.data.metrics if k.startswith("align/fusion.1/cls/")]
    assert align  # per-layer alignment values, per epoch
    assert len(client.get_metric_history(ft.info.run_id, align[0])) == 3  # epochs 0, 1, 2
    artifacts = {a.path for a in client.list_artifacts(ft.info.run_id)}
    assert {"config.json", "results.json", "alignment", "model"} <= artifacts
    model = {a.path for a in client.list_artifacts(ft.info.run_id, "model")}
    assert "model/model.safetensors" in model  # the model is an artifact of its run
    assert "train/loss" in runs["pretrain"].data.metrics or runs["pretrain"].data.metrics


def test_a_run_folder_with_quotes_in_its_path_is_found_again(tmp_path, mlflow_uri):
    from vilalign.experiments.tracking import RunStore

    store = RunStore(mlflow_uri, "quotes")
    ids = {}
    for name in ("plain", "it's", 'say "it\'s"'):
        folder = tmp_path / name
        folder.mkdir()
        assert store.find_run(folder) is None
        ids[name] = store.tracker(folder, name, {}, {}).run_id
        (folder / "mlflow.json").unlink()  # found by the folder's tag, not by the record
    assert {name: store.find_run(tmp_path / name) for name in ids} == ids

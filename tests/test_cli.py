from __future__ import annotations

import pytest

from vilalign.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "vilalign demo" in out


def test_info_describes_layers(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "fusion layer 1: co-attention" in out and "fusion layer 0: self-attention" in out


def test_info_help_names_every_baseline(capsys):
    from vilalign.model import BASELINES

    with pytest.raises(SystemExit):
        main(["info", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in BASELINES), out


def test_bad_preset_is_a_clear_error(capsys):
    assert main(["info", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "tiny, base, minilm" in err


def test_analyse_writes_a_tidy_table(tmp_path, capsys):
    import pandas as pd

    code = main(
        [
            "analyse",
            "--preset",
            "tiny",
            "--n-samples",
            "40",
            "--batch-size",
            "20",
            "--measures",
            "cka_linear,mutual_knn",
            "--views",
            "cls",
            "--output-dir",
            str(tmp_path),
            "--permutations",
            "0",
        ]
    )
    assert code == 0
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert set(table.measure) == {"cka_linear", "mutual_knn"}
    assert list(table.layer.unique()) == ["fusion.0", "fusion.1", "fusion.2", "fusion.3"]
    out = capsys.readouterr().out
    assert "coattention" in out and "alignment.parquet" in out
    matrix = pd.read_csv(tmp_path / "alignment_layer_matrix.csv", index_col=0)
    assert matrix.shape == (6, 6)


def _analyse_on(device: str, tmp_path, monkeypatch, caplog) -> str:
    """`vilalign analyze` (the alias) with the old --run-dir and --set model.*; returns the
    device the model sat on when the library measured it."""
    import pandas as pd

    import vilalign.analysis.pipeline as pipeline

    seen = []
    measure = pipeline.run_alignment

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).device)
        return measure(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_alignment", spy)
    args = ["analyze", "--preset", "tiny", "--set", "model.depth=2",
            "--set", "model.coattention_layers=[1]", "--device", device, "--no-progress",
            "--n-samples", "16", "--batch-size", "16", "--measures", "cka_linear",
            "--views", "cls", "--run-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert list(table.layer) == ["fusion.0", "fusion.1"]  # --set model.depth=2
    assert list(table.layer_kind) == ["self_attention", "coattention"]
    assert any("--run-dir is deprecated" in r.getMessage() for r in caplog.records)
    (where,) = seen
    return where.type


def test_analyze_runs_on_the_device_asked_for(tmp_path, monkeypatch, caplog):
    assert _analyse_on("cpu", tmp_path, monkeypatch, caplog) == "cpu"


@pytest.mark.gpu
def test_analyse_moves_the_model_to_cuda(tmp_path, monkeypatch, caplog):
    assert _analyse_on("cuda", tmp_path, monkeypatch, caplog) == "cuda"


def test_info_applies_set_to_the_preset(capsys):
    assert main(["info", "--preset", "tiny", "--set", "model.depth=6"]) == 0
    assert "fusion layer 5:" in capsys.readouterr().out


def test_analyse_unknown_measure_fails_naming_it(tmp_path, capsys):
    args = [
        "analyse",
        "--preset",
        "tiny",
        "--n-samples",
        "8",
        "--measures",
        "ckaa",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "unknown measure 'ckaa'" in capsys.readouterr().err


def test_finetune_command_runs_and_reports(tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text(
        "preset: tiny\ntask: easyvqa\ndata: {name: easyvqa, limit: 48}\n"
        "splits: {val_fraction: 0.25}\n"
        "train: {batch_size: 16, epochs: 1, max_steps: 2, progress: false}\n"
    )
    code = main(
        [
            "finetune",
            str(config),
            "--output-dir",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "model.depth=2",
            "--set",
            "model.coattention_layers=[1]",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "test/accuracy" in out
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # recorded in the MLflow store beside the run folder, finished, with its files
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vilalign").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "finetune"
    assert {"test/accuracy", "val/accuracy", "train/loss"} <= set(run.data.metrics)
    assert run.data.params["config.model.depth"] == "2"
    assert run.data.params["config.train.device"] == "cpu"  # --device, as the run file's field
    assert run.data.params["config.train.progress"] == "false"
    assert "metrics.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the same folder again without --resume is refused, and the recorded run stays finished
    again = ["finetune", str(config), "--output-dir", str(tmp_path / "run")]
    assert main(again) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_pretrain_without_tracking_writes_files_only(tmp_path, capsys):
    config = tmp_path / "pt.yaml"
    config.write_text(
        "preset: tiny\ndata: {name: easyvqa_captions, limit: 32}\n"
        "splits: {val_fraction: 0.25}\n"
        "train: {batch_size: 8, epochs: 1, max_steps: 1, progress: false}\n"
    )
    run_dir = tmp_path / "runs" / "pt"
    assert main(["pretrain", str(config), "--output-dir", str(run_dir), "--no-tracking"]) == 0
    assert (run_dir / "metrics.jsonl").is_file()
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    # report --output-dir DIR writes DIR/report.html
    assert main(["report", str(run_dir), "--output-dir", str(tmp_path / "pages")]) == 0
    assert (tmp_path / "pages" / "report.html").is_file()


def test_finetune_bad_field_in_run_file(tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text("preset: tiny\ntrain: {epoks: 1}\n")
    assert main(["finetune", str(config)]) == 2
    assert "train.epoks: unknown field" in capsys.readouterr().err


def test_attention_command_writes_entropies_and_bertviz(tmp_path, capsys):
    import pandas as pd

    code = main(
        [
            "attention",
            "--preset",
            "tiny",
            "--n-samples",
            "8",
            "--batch-size",
            "8",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    frame = pd.read_csv(tmp_path / "attention_entropy.csv")
    assert set(frame.direction) == {"text_self", "image_self", "text_to_image", "image_to_text"}
    assert frame.normalized_entropy.between(0, 1 + 1e-9).all()
    assert "<html" in (tmp_path / "attention.html").read_text().lower()
    assert "self-attention heads" in capsys.readouterr().out


def test_attention_command_names_a_bertviz_sample_out_of_range(tmp_path, capsys):
    args = ["attention", "--preset", "tiny", "--n-samples", "4", "--output-dir", str(tmp_path)]
    assert main([*args, "--bertviz-sample", "4"]) == 2
    assert "--bertviz-sample: 4 is not one of the 4 samples" in capsys.readouterr().err
    assert not (tmp_path / "attention_entropy.csv").exists()  # checked before any work


def test_explain_command_writes_overlays_and_names_unknown_ids(tmp_path, capsys):
    code = main(
        [
            "explain",
            "--preset",
            "tiny",
            "--ids",
            "test-3",
            "--method",
            "relevancy",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert (tmp_path / "test-3_relevancy.png").is_file()
    assert (tmp_path / "relevancy.html").is_file()
    assert (
        main(["explain", "--preset", "tiny", "--ids", "nope", "--output-dir", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "not in the dataset: ['nope']" in err and "vilalign data ids" in err


def test_a_run_that_fails_is_marked_failed_in_the_store(tmp_path, monkeypatch):
    import vilalign.train.run as run_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(run_module, "run_finetuning", broken)
    config = tmp_path / "ft.yaml"
    config.write_text("preset: tiny\ntask: easyvqa\ndata: {name: easyvqa}\n")
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["finetune", str(config), "--output-dir", str(tmp_path / "run")])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vilalign").experiment_id])
    assert run.info.status == "FAILED"


def test_analyse_averages_each_images_captions(tmp_path):
    import pandas as pd

    from tests.data.helpers import write_flickr_karpathy

    root = write_flickr_karpathy(tmp_path / "flickr")
    args = ["analyse", "--preset", "tiny", "--dataset", "flickr30k_karpathy", "--root",
            str(root), "--split", "test", "--n-samples", "40", "--views", "cls",
            "--measures", "cka_linear", "--output-dir", str(tmp_path / "out"),
            "--captions", "average"]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "alignment.csv")
    assert len(table) == 4 and table["value"].between(0, 1).all()

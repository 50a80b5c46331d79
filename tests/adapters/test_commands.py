"""``vilalign analyse / attention --hf-model``: the same commands, the same files."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from tests.adapters import tiny
from tests.adapters.conftest import make_samples
from vilalign.analysis.align import RunInfo
from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
from vilalign.analysis.report import COLUMNS
from vilalign.cli import main
from vilalign.config import model_config
from vilalign.data import Collator, DataConfig
from vilalign.data.types import Sample
from vilalign.model import build_model, load_tokenizer

MEASURES = ("cosine", "cka_linear")


def our_table():
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    samples = [
        Sample(torch.randn(3, 64, 64, generator=g), text, None, f"s{i}")
        for i, text in enumerate(tiny.TEXTS)
    ]
    loader = DataLoader(samples, batch_size=3, collate_fn=Collator(load_tokenizer(cfg.text)))
    spec = AlignmentSpec(data=DataConfig(), split="test", n_samples=6, measures=MEASURES)
    return run_alignment(model, None, spec, RunInfo(run="ours"), loader=loader).table


@pytest.mark.parametrize(
    ("name", "kind", "layers"),
    [
        ("bridgetower", "coattention", ["fusion.0", "fusion.1"]),
        ("vilt", "single_stream", ["fusion.0", "fusion.1"]),
        ("clip", "encoder", ["encoder.0", "encoder.1"]),
    ],
)
def test_the_alignment_table_has_our_columns(name, kind, layers, adapters):
    adapter = adapters[name]
    collate = adapter.collator(adapter.max_text_length)
    loader = DataLoader(make_samples(), batch_size=3, collate_fn=collate)
    spec = AlignmentSpec(data=DataConfig(), split="test", n_samples=6, measures=MEASURES)
    result = run_alignment(adapter, None, spec, RunInfo(run=name), loader=loader)
    ours = our_table()
    assert list(result.table.columns) == list(ours.columns) == list(COLUMNS)
    assert result.table.dtypes.equals(ours.dtypes)
    table = result.table
    assert sorted(table["layer"].unique()) == layers
    assert set(table["layer_kind"]) == {kind}
    assert set(table["view"]) == {"cls", "mean"} and set(table["measure"]) == set(MEASURES)
    assert len(table) == len(layers) * 2 * len(MEASURES) and table["value"].notna().all()
    # the layer x layer matrix sees every text and every image layer
    assert result.matrix.shape[0] >= len(layers) and result.matrix.notna().all().all()


def test_analyse_hf_model_writes_the_tidy_table(folders, tmp_path, capsys):
    code = main([
        "analyse", "--hf-model", str(folders["vilt"]), "--dataset", "easyvqa",
        "--n-samples", "16", "--batch-size", "8", "--measures", "cosine,cka_linear",
        "--run-dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert list(table.columns) == list(COLUMNS)
    assert set(table["layer"]) == {"fusion.0", "fusion.1"} and set(table["run"]) == {"vilt"}
    assert (tmp_path / "alignment_layer_matrix.csv").is_file()
    assert "fusion.1" in capsys.readouterr().out


def test_analyse_hf_model_defaults_to_the_views_it_has(folders, region_file, tmp_path):
    # VisualBERT reads regions by sample id; easy-VQA test ids are test-0, test-1, ...
    # (16: the first 11 questions show one image, and analyse refuses one image)
    import numpy as np

    ids = [f"test-{i}" for i in range(16)]
    path = tiny.write_regions(tmp_path / "easyvqa-regions.npz", ids)
    code = main([
        "analyse", "--hf-model", str(folders["visual_bert"]), "--regions", str(path),
        "--n-samples", "16", "--batch-size", "8", "--measures", "cosine",
        "--run-dir", str(tmp_path / "run"),
    ])  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "run" / "alignment.csv")
    assert set(table["view"]) == {"mean"}
    assert np.isfinite(table["value"]).all()


def test_attention_hf_model_runs_the_focus_test(folders, tmp_path, capsys):
    code = main([
        "attention", "--hf-model", str(folders["bridgetower"]), "--n-samples", "8",
        "--batch-size", "4", "--run-dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "co-attention heads" in out and "attention.html" not in out
    frame = pd.read_csv(tmp_path / "attention_entropy.csv")
    assert set(frame["layer_kind"]) == {"coattention", "self_attention"}
    cross = frame[frame["layer_kind"] == "coattention"]
    assert set(cross["direction"]) == {"text_to_image", "image_to_text"}
    assert frame["normalized_entropy"].between(0, 1 + 1e-9).all()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hf-model", "no-such-org/no-such-model"], "HF_HUB_OFFLINE"),
        (["--checkpoint", "x", "--regions", "r.npz"], "--regions: only --hf-model"),
    ],
)
def test_bad_published_model_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["analyse", *argv, "--run-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vilalign analyse: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_region_id_stops_the_command_naming_it(folders, region_file, tmp_path, capsys):
    code = main([
        "analyse", "--hf-model", str(folders["lxmert"]), "--regions", str(region_file),
        "--n-samples", "16", "--measures", "cosine", "--output-dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    # easy-VQA's first test question shows image test-img0: neither id is in the file
    assert str(region_file) in err and "no regions for id 'test-img0 / test-0'" in err

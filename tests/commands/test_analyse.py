"""`vilalign analyse` by default: intervals, nulls, family-wise p-values, the at-init
reference, its figures, and `vilalign report` over its folder (issue 14)."""

from __future__ import annotations

import json

import pandas as pd

from vilalign.cli import main

SMALL = ["--preset", "tiny", "--n-samples", "24", "--batch-size", "24", "--views", "cls",
         "--permutations", "20", "--resamples", "10", "--no-progress"]  # fmt: skip


def test_analyse_reports_every_number_with_its_statistics_and_the_init_reference(tmp_path, capsys):
    # --preset builds the model from --seed; --reference init with the same seed rebuilds
    # exactly it, so trained − at-init is 0 everywhere: the reference is the same model.
    assert main(["analyse", *SMALL, "--reference", "init", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "alignment.csv")
    assert set(table["measure"]) == {"cka_unbiased", "mutual_knn"}  # the default set
    for column in ("ci_low", "ci_high", "p_value", "null_mean", "p_familywise", "init_value"):
        assert table[column].notna().all(), column
    assert (table["delta"].abs() < 1e-9).all()
    assert (table["init_value"] - table["value"]).abs().max() < 1e-9
    out = capsys.readouterr().out
    assert "-> best layer by cka_unbiased (cls view): fusion." in out and "family-wise p" in out
    assert "best layer pair by cka_unbiased (cls)" in out
    meta = json.loads((tmp_path / "analysis.json").read_text())
    assert meta["heatmap_measure"] == "cka_unbiased" and meta["spec"]["permutations"] == 20
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pictures == ["layer_heatmap.png", "layers_cka_unbiased.png", "layers_mutual_knn.png"]
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.index("The answer") < page.index("Alignment by layer")
    assert "best layer by mutual_knn (cls view)" in page and "data:image/png;base64," in page


def test_too_few_samples_for_an_interval_fails_before_any_collection(tmp_path, capsys, monkeypatch):
    import vilalign.analysis.pipeline as pipeline

    def collects(*args, **kwargs):
        raise AssertionError("collection ran")

    monkeypatch.setattr(pipeline, "collect_for", collects)
    args = ["analyse", "--preset", "tiny", "--n-samples", "15", "--measures", "mutual_knn",
            "--output-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mutual_knn: an interval needs at least 22 samples" in err and "N = 15" in err
    assert main([*args[:4], "16", "--reference-seeds", "0,1", *args[5:]]) == 2
    assert "--reference-seeds needs --reference init" in capsys.readouterr().err

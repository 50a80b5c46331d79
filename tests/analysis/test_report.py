"""Tests of the tidy alignment table (I/O, validation) and the report plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from vilalign.analysis import report as R

KINDS = {"fusion.0": "self_attention", "fusion.1": "coattention", "fusion.2": "self_attention",
         "fusion.3": "coattention"}  # fmt: skip


def _rows(epochs=(1,), seeds=(0,), measures=("cka_linear", "mutual_knn"), with_stats=True):
    rows = []
    for seed in seeds:
        for epoch in epochs:
            for i, (layer, kind) in enumerate(KINDS.items()):
                for view in ("cls", "mean"):
                    for measure in measures:
                        value = 0.1 * i + 0.01 * epoch + 0.001 * seed
                        row = {
                            "run": f"run{seed}", "seed": seed, "epoch": epoch,
                            "dataset": "easyvqa", "layer": layer, "layer_kind": kind,
                            "view": view, "measure": measure, "value": value,
                        }  # fmt: skip
                        if with_stats:
                            row.update(ci_low=value - 0.05, ci_high=value + 0.05, p_value=0.01)
                        rows.append(row)
    return rows


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- table


def test_make_table_has_exactly_the_columns_in_order():
    table = R.make_table(_rows(with_stats=False))
    assert tuple(table.columns) == R.COLUMNS
    assert table["p_value"].isna().all()
    assert len(table) == 4 * 2 * 2


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trips(tmp_path, suffix):
    table = R.make_table(_rows(epochs=(1, 2)))
    table.loc[0, "epoch"] = pd.NA  # an analysis outside training has no epoch
    table.loc[1, "p_value"] = np.nan
    table.loc[2, "run"] = ""  # the default run name must survive a CSV round trip
    path = R.write_table(table, tmp_path / f"alignment{suffix}")
    assert path.exists()
    back = R.read_table(path)
    pd.testing.assert_frame_equal(back, R.validate_table(table))


def test_write_tables_writes_both_formats(tmp_path):
    paths = R.write_tables(R.make_table(_rows()), tmp_path / "out" / "alignment")
    assert [p.suffix for p in paths] == [".csv", ".parquet"]
    assert all(p.exists() for p in paths)


@pytest.mark.parametrize("column", R.REQUIRED)
def test_missing_column_raises_naming_it(column):
    frame = pd.DataFrame(_rows())
    with pytest.raises(ValueError, match=f"missing column\\(s\\): {column}"):
        R.validate_table(frame.drop(columns=[column]))


def test_unexpected_column_and_bad_values_raise(tmp_path):
    frame = pd.DataFrame(_rows())
    with pytest.raises(ValueError, match="unexpected column\\(s\\): score"):
        R.validate_table(frame.assign(score=1.0))
    with pytest.raises(ValueError, match="'value' must be numeric"):
        R.validate_table(frame.assign(value="high"))
    with pytest.raises(ValueError, match="p_value"):
        R.validate_table(frame.assign(p_value=1.5))
    with pytest.raises(ValueError, match="'seed' must hold integers"):
        R.validate_table(frame.assign(seed="first"))
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        R.write_table(R.make_table(_rows()), tmp_path / "alignment.xlsx")
    with pytest.raises(ValueError, match="DataFrame"):
        R.validate_table(_rows())


def test_read_table_validates(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame(_rows()).drop(columns=["layer_kind"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="layer_kind"):
        R.read_table(path)


# ----------------------------------------------------------------- plots


def test_across_layers_marks_coattention_layers_and_null_band():
    table = R.make_table(_rows())
    null = {layer: (0.0, 0.05) for layer in KINDS}
    fig = R.figure_across_layers(table, "cka_linear", null=null)
    ax = fig.axes[0]
    # one shaded span per co-attention layer, at its x position
    spans = list(ax.patches)
    assert len(spans) == 2
    centres = sorted(p.get_x() + p.get_width() / 2 for p in spans)
    assert centres == pytest.approx([1.0, 3.0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "co-attention" in labels
    assert "null 5–95 %" in labels
    assert {"cls", "mean"} <= set(labels)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(KINDS)


def test_across_layers_without_coattention_or_null():
    rows = [dict(r, layer_kind="self_attention") for r in _rows()]
    fig = R.figure_across_layers(R.make_table(rows), "cka_linear")
    ax = fig.axes[0]
    assert len(ax.patches) == 0
    assert not any(isinstance(c, PolyCollection) and c.get_label().startswith("null")
                   for c in ax.collections)  # fmt: skip


def test_across_layers_plots_the_last_epoch_mean_over_seeds():
    table = R.make_table(_rows(epochs=(1, 2), seeds=(0, 1, 2)))
    fig = R.figure_across_layers(table, "cka_linear")
    line = next(l for l in fig.axes[0].get_lines() if l.get_label() == "cls")
    expected = [0.1 * i + 0.02 + 0.001 for i in range(4)]  # epoch 2, mean of seeds 0..2
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert "epoch 2" in fig.axes[0].get_title()


def test_null_band_from_dataframe_and_errors():
    table = R.make_table(_rows())
    band = pd.DataFrame({"layer": list(KINDS), "low": 0.0, "high": 0.1})
    R.figure_across_layers(table, "cka_linear", null=band)
    with pytest.raises(ValueError, match="missing column"):
        R.figure_across_layers(table, "cka_linear", null=band.drop(columns=["high"]))
    with pytest.raises(ValueError, match="no rows for measure 'svcca'"):
        R.figure_across_layers(table, "svcca")


def test_over_epochs_one_line_per_layer_coattention_solid():
    table = R.make_table(_rows(epochs=(0, 1, 2, 3)))
    fig = R.figure_over_epochs(table, "mutual_knn", view="mean")
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    assert set(lines) == {"fusion.0", "fusion.1 (co-attn)", "fusion.2", "fusion.3 (co-attn)"}
    assert lines["fusion.1 (co-attn)"].get_linestyle() == "-"
    assert lines["fusion.0"].get_linestyle() == "--"
    np.testing.assert_allclose(lines["fusion.0"].get_xdata(), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="view 'tokens'"):
        R.figure_over_epochs(table, "mutual_knn", view="tokens")


def test_heatmap_marks_coattention_and_keeps_orientation():
    matrix = pd.DataFrame(
        np.arange(12, dtype=float).reshape(3, 4),
        index=pd.Index(["text.0", "fusion.0", "fusion.1"], name="text_layer"),
        columns=pd.Index(["image.0", "image.1", "fusion.0", "fusion.1"], name="image_layer"),
    )
    fig = R.figure_layer_heatmap(matrix, coattention={"fusion.1"})
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix.to_numpy())
    xt = [t.get_text() for t in ax.get_xticklabels()]
    yt = [t.get_text() for t in ax.get_yticklabels()]
    assert xt == ["image.0", "image.1", "fusion.0", "fusion.1*"]
    assert yt == ["text.0", "fusion.0", "fusion.1*"]
    assert ax.get_xlabel() == "image_layer" and ax.get_ylabel() == "text_layer"
    assert len(ax.texts) == 12  # annotated cells
    with pytest.raises(ValueError, match="non-empty DataFrame"):
        R.figure_layer_heatmap(pd.DataFrame())


def test_plot_functions_write_pngs_and_return_paths(tmp_path):
    table = R.make_table(_rows(epochs=(1, 2)))
    matrix = pd.DataFrame(np.eye(4), index=list(KINDS), columns=list(KINDS))
    paths = R.plot_report(
        table, tmp_path / "plots", matrix=matrix, nulls={"cka_linear": {"fusion.0": (0, 0.1)}}
    )
    names = sorted(p.name for p in paths)
    assert names == [
        "epochs_cka_linear.png", "epochs_mutual_knn.png", "layer_heatmap.png",
        "layers_cka_linear.png", "layers_mutual_knn.png",
    ]  # fmt: skip
    assert all(p.exists() and _is_png(p) for p in paths)
    single = R.plot_across_layers(table, "cka_linear", tmp_path / "one.png")
    assert single == tmp_path / "one.png" and _is_png(single)
    with pytest.raises(ValueError, match=r"\.png"):
        R.plot_across_layers(table, "cka_linear", tmp_path / "one.jpg")


def test_plot_report_skips_epoch_plot_for_a_single_epoch(tmp_path):
    paths = R.plot_report(R.make_table(_rows()), tmp_path)
    assert sorted(p.name for p in paths) == ["layers_cka_linear.png", "layers_mutual_knn.png"]


def test_safe_filename():
    assert R.safe_filename("maxsim text→patch/v2") == "maxsim_text_patch_v2"


def test_write_table_killed_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = R.write_table(R.make_table(_rows()), tmp_path / "alignment.csv")
    before = path.read_text()

    def dies_midway(self, target, *args, **kwargs):
        with open(target, "w") as f:
            f.write("run,se")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        R.write_table(R.make_table(_rows(epochs=(2,))), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["alignment.csv"]

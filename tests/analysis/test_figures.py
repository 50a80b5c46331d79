"""Pictures that compare: shared axes, interval and null bands for every view, integer
epochs from 0, one colour scale per measure, readable metric panels, relevancy maps
that name the answer (issue 14)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection

from vilalign.analysis import report as R

LAYERS = {"fusion.0": "self_attention", "fusion.1": "coattention"}


def _table(runs=("vilbert", "no_coattention"), views=("cls", "mean"), epochs=(0, 1, 2)):
    rows = []
    for r, run in enumerate(runs):
        for seed in (0, 1, 2):
            for epoch in epochs:
                for i, (layer, kind) in enumerate(LAYERS.items()):
                    for view in views:
                        v = 0.1 * r + 0.05 * i + 0.01 * epoch + 0.001 * seed
                        rows.append({
                            "run": run, "seed": seed, "epoch": epoch, "dataset": "d",
                            "layer": layer, "layer_kind": kind, "view": view,
                            "measure": "cka_unbiased", "value": v, "ci_low": v - 0.01,
                            "ci_high": v + 0.01, "null_mean": 0.0, "null_low": -0.02,
                            "null_high": 0.02,
                        })  # fmt: skip
    return R.make_table(rows)


def _hatched(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_hatch()]


def test_every_model_on_one_panel_with_interval_and_null_bands_for_every_view():
    fig = R.figure_across_layers(_table(), "cka_unbiased", by="run")
    (ax,) = [a for a in fig.axes if a.get_lines()]
    labels = [line.get_label() for line in ax.get_lines() if ": " not in line.get_label()]
    assert labels == ["vilbert (cls)", "vilbert (mean)", "no_coattention (cls)",
                      "no_coattention (mean)"]  # fmt: skip
    at_init = [li for li in ax.get_lines() if li.get_label().endswith(": at init")]
    assert len(at_init) == 4  # epoch 0 beside the last epoch, for every model and view
    np.testing.assert_allclose(at_init[0].get_ydata(), [0.001, 0.051])
    colour = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colour["vilbert (cls)"] == colour["vilbert (mean)"] != colour["no_coattention (cls)"]
    assert len(_hatched(ax)) == 4  # a null band per model and view
    line = next(li for li in ax.get_lines() if li.get_label() == "vilbert (cls)")
    np.testing.assert_allclose(line.get_ydata(), [0.021, 0.071])  # last epoch, mean of seeds


def test_over_epochs_integer_epochs_from_zero_one_panel_per_model_shared_axis():
    fig = R.figure_over_epochs(_table(), "cka_unbiased", view="cls", by="run")
    axes = [a for a in fig.axes if a.get_lines()]
    assert [a.get_title() for a in axes] == ["vilbert", "no_coattention"]
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    ticks = [t for t in axes[0].get_xticks() if axes[0].get_xlim()[0] <= t <= axes[0].get_xlim()[1]]
    assert ticks == [0, 1, 2] and axes[0].get_xlim()[0] < 0
    assert all(len([c for c in a.collections if isinstance(c, PolyCollection)]) == 2 for a in axes)


def test_layer_heatmaps_share_one_named_colour_scale():
    low = pd.DataFrame([[0.0, 0.1], [0.2, 0.3]], index=["t0", "t1"], columns=["i0", "i1"])
    fig = R.figure_layer_heatmaps({"a": low, "b": low + 0.5}, "cka_unbiased")
    images = [a.images[0] for a in fig.axes if a.images]
    assert len(images) == 2
    assert {im.get_clim() for im in images} == {(0.0, 0.8)}
    bars = [a for a in fig.axes if a.get_ylabel() == "cka_unbiased"]
    assert len(bars) == 1  # one colour bar, named


def test_metrics_png_has_a_panel_for_losses_task_metrics_and_throughput(tmp_path):
    from vilalign.train.tracker import _panel, plot_metrics

    records = [
        {"step": s, "epoch": 1, "train/loss": 1.0 / s, "train/lr": 1e-3} for s in range(1, 5)
    ] + [{"step": 4, "epoch": 1, "train/loss": 0.3, "train/samples_per_s": 50.0,
          "train/data_wait_share": 0.1, "val/loss": 0.4, "val/accuracy": 0.7,
          "align/fusion.1/cls/cka_unbiased": 0.5}]  # fmt: skip
    assert plot_metrics(records, tmp_path / "m.png").is_file()
    assert [_panel(k) for k in ("val/loss", "val/accuracy", "train/samples_per_s")] == [
        "losses", "task metrics", "throughput"]  # fmt: skip
    assert _panel("align/fusion.1/cls/cka_unbiased") is None  # the report draws those


def test_relevancy_titles_name_the_answer_and_its_probability(tmp_path):
    from vilalign.analysis.attribution import Explanation
    from vilalign.analysis.visualize import explanation_html, save_heatmap_overlay

    e = Explanation("q7", "relevancy", 2, 2, ["[CLS]", "red", "[SEP]"], np.array([1, 0, 1], bool),
                    np.zeros(3), np.ones((2, 2)), target_name="circle", predicted_name="circle",
                    probability=0.83)  # fmt: skip
    assert e.title() == 'q7: relevancy for "circle" (p = 0.83; predicted "circle")'
    unnamed = Explanation("q8", "gradcam", 3, 1, [], np.zeros(0, bool), np.zeros(0),
                          np.ones((2, 2)))  # fmt: skip
    assert unnamed.title() == 'q8: gradcam for "class 3" (but predicted "class 1")'
    assert "relevancy for &quot;circle&quot;" in explanation_html(e)
    path = save_heatmap_overlay(np.zeros((8, 8, 3)), np.eye(2), tmp_path / "o.png", e.title())
    assert path.read_bytes()[:4] == b"\x89PNG"

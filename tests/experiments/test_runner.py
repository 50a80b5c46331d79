"""The grid runner end to end: a 2×2 grid × 2 seeds, interruption and resume, summaries,
the HTML report and the commands over the same folder."""

from __future__ import annotations

import base64
import json
import re

import pandas as pd
import pytest

from tests.experiments.conftest import tiny_experiment
from vilalign.cli import main
from vilalign.commands.run import summary_text
from vilalign.experiments.report import write_report
from vilalign.experiments.runner import (
    DONE_FILE,
    alignment_spec,
    cell_metrics,
    group_metrics,
    metric_columns,
    read_done,
    run_experiment,
)
from vilalign.experiments.spec import expand_grid
from vilalign.train.tracker import FileTracker

# 2 baselines × 2 fine-tuning learning rates × 2 seeds; pretraining is covered by the
# tracking test (each pretraining run would double a cell's cost here).
GRID = {
    "baselines": ["vilbert", "no_coattention"],
    "axes": {
        "lr": {
            "low": {"finetune": {"optim": {"lr": 3e-4}}},
            "high": {"finetune": {"optim": {"lr": 1e-3}}},
        }
    },
    "seeds": [0, 1],
}


class Interrupt(FileTracker):
    """Dies (like Ctrl-C) at the first log call of epoch 2, after epoch 1's checkpoint."""

    def log_metrics(self, metrics, step, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        super().log_metrics(metrics, step, epoch)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """Run the grid, interrupted in its third cell, then the same command again."""
    out = tmp_path_factory.mktemp("grid")
    exp = tiny_experiment(
        out,
        grid=GRID,
        finetune={"train": {"log_every_n_steps": 1}},
        analysis={"attribution_examples": 1},
    )
    cells = expand_grid(exp)
    target = cells[2].key

    def factory(stage, cell, run_dir):
        return Interrupt(run_dir) if stage == "finetune" and cell.key == target else None

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tracker_factory=factory, progress=False)
    finished_before = sorted(p.parent.name for p in out.glob(f"cells/*/{DONE_FILE}"))
    second = run_experiment(exp, progress=False)
    return exp, cells, target, finished_before, second


def test_rerun_finishes_only_the_missing_cells(grid_run):
    exp, cells, target, finished_before, second = grid_run
    keys = [c.key for c in cells]
    assert finished_before == sorted(keys[:2])
    assert second.skipped == keys[:2]
    assert second.ran == keys[2:]
    # The interrupted cell resumed from its epoch-1 checkpoint: no record twice.
    records = FileTracker(second.out_dir / "cells" / target / "finetune").records()
    ends = [r["epoch"] for r in records if "val/accuracy" in r]
    assert ends == [1, 2]
    steps = [r["step"] for r in records if "train/lr" in r]
    assert steps == sorted(set(steps))
    # A third run has nothing left to do.
    third = run_experiment(exp, progress=False)
    assert third.ran == [] and third.skipped == keys


def test_grid_summaries_aggregate_over_seeds(grid_run):
    _, cells, _, _, second = grid_run
    assert len(cells) == 8
    groups = second.groups
    assert len(groups) == 4
    assert (groups["test/accuracy_n"] == 2).all()
    assert groups["test/accuracy_std"].notna().all()
    assert ((groups["test/accuracy"] >= 0) & (groups["test/accuracy"] <= 1)).all()
    align = pd.read_csv(second.out_dir / "summary" / "alignment_groups.csv")
    assert set(align["epoch"]) == {0, 1, 2}  # epoch 0: before the first optimiser step
    assert (align["n"] == 2).all()
    vilbert = align[align["run"] == "vilbert_pt-none_lr-low"]
    assert set(vilbert["layer_kind"]) == {"self_attention", "coattention"}
    nulls = pd.read_csv(second.out_dir / "cells" / cells[0].key / "alignment" / "nulls_epoch2.csv")
    assert (nulls["low"] <= nulls["high"]).all()
    focus = json.loads(
        (second.out_dir / "cells" / cells[0].key / "attention" / "focus.json").read_text()
    )
    assert "co-attention heads" in focus["summary"]


def test_report_is_one_self_contained_page(grid_run):
    *_, second = grid_run
    path = write_report(second.out_dir)
    page = path.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 6
    assert all(src.startswith("data:image/png;base64,") for src in images)
    png = base64.b64decode(images[0].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for heading in ("Downstream metrics", "Alignment by layer", "Attention entropy",
                    "Attribution examples", "Configuration"):  # fmt: skip
        assert heading in page
    # pictures first, tables after
    assert page.index("Alignment by layer") < page.index("Tables: downstream metrics")


def test_report_of_a_single_run(grid_run):
    *_, second = grid_run
    run_dir = next(second.out_dir.glob("cells/*/finetune"))
    path = write_report(run_dir)
    assert "data:image/png;base64," in path.read_text()


def test_commands_over_a_finished_grid(grid_run, tmp_path, capsys):
    exp, *_, second = grid_run
    file = tmp_path / "exp.json"
    file.write_text(exp.model_dump_json())
    assert main(["run", str(file), "--no-progress", "--no-tracking"]) == 0
    out = capsys.readouterr().out
    assert "0 cell(s) run, 8 already done" in out
    assert "vilbert_pt-none_lr-high" in out
    assert main(["report", str(second.out_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_the_layer_matrix_uses_the_first_pooled_measure(tmp_path):
    # A token-level measure listed first cannot fill the layer x layer matrix.
    analysis = {"views": ["cls", "tokens"], "measures": ["maxsim_text_to_patch", "cka_unbiased"]}
    exp = tiny_experiment(tmp_path, analysis=analysis)
    spec = alignment_spec(exp, expand_grid(exp)[0])
    assert spec.heatmap_measure == "cka_unbiased"


def test_metrics_with_underscores_reach_the_summary_and_the_report(tmp_path):
    # MM-IMDb's f1_micro and VQA's vqa_accuracy were dropped as if they were _std columns.
    for seed, f1 in ((0, 0.5), (1, 0.7)):
        cell = tmp_path / "cells" / f"vilbert_s{seed}"
        cell.mkdir(parents=True)
        done = {
            "key": cell.name, "group": "vilbert", "labels": {"baseline": "vilbert"},
            "seed": seed, "test": {"test/f1_micro": f1, "test/loss": 1.0},
        }  # fmt: skip
        (cell / DONE_FILE).write_text(json.dumps(done))
    groups = group_metrics(cell_metrics(read_done(tmp_path)))
    assert metric_columns(groups) == ["test/f1_micro", "test/loss"]
    assert "test/f1_micro 0.6000 ± 0.1414" in summary_text(groups)
    page = write_report(tmp_path).read_text()
    assert "test/f1_micro: mean ± std over seeds" in page  # the figure's caption
    assert "0.6000 ± 0.1414" in page  # the metrics table


def test_the_null_band_is_one_views_and_the_caption_names_it(tmp_path):
    from vilalign.experiments.report import _null_for

    for cell, shift in (("a", 0.0), ("b", 0.2)):
        folder = tmp_path / "cells" / cell / "alignment"
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "measure": ["cka_linear"] * 4,
                "view": ["cls", "cls", "mean", "mean"],
                "layer": ["fusion.0", "fusion.1"] * 2,
                "low": [0.1 + shift, 0.2 + shift, 0.5, 0.6],
                "high": [0.3 + shift, 0.4 + shift, 0.7, 0.8],
            }
        ).to_csv(folder / "nulls_epoch3.csv", index=False)
    band = _null_for(tmp_path, ["a", "b"], "cka_linear", 3)
    assert band["view"].unique().tolist() == ["cls"]  # never the views' bands averaged
    assert band["low"].round(6).tolist() == [0.2, 0.3]
    assert band["high"].round(6).tolist() == [0.4, 0.5]
    assert _null_for(tmp_path, ["a"], "cka_linear", 2).empty  # no file for that epoch


def test_report_captions_name_the_null_view(grid_run):
    *_, second = grid_run
    page = write_report(second.out_dir).read_text()
    assert "permutation null 5–95 % (" in page and " view)" in page

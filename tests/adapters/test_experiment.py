"""Published models in an experiment file: measured on the cells' data, drawn beside them."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.experiments.conftest import tiny_experiment
from vilalign.config import ConfigError
from vilalign.experiments.published import (
    PUBLISHED_DIR,
    measure_published,
    published_tables,
    relative_depth,
)
from vilalign.experiments.report import ExperimentReport
from vilalign.experiments.spec import expand_grid


def test_published_entries_need_distinct_labels(tmp_path, folders):
    entry = {"name": str(folders["vilt"])}
    with pytest.raises(ConfigError, match="used twice"):
        tiny_experiment(tmp_path, published=[entry, entry])
    exp = tiny_experiment(tmp_path, published=[entry, {**entry, "label": "vilt-again"}])
    assert [m.run_label for m in exp.published] == ["vilt", "vilt-again"]


def test_published_models_are_measured_once_with_their_reference(tmp_path, folders):
    published = [{"name": str(folders["vilt"]), "at_init": True},
                 {"name": str(folders["siglip"]), "label": "siglip"}]  # fmt: skip
    exp = tiny_experiment(tmp_path, published=published, analysis={"views": ["cls", "mean"]})
    cells = expand_grid(exp)
    assert measure_published(exp, tmp_path, cells) == ["vilt", "vilt@init", "siglip"]
    assert measure_published(exp, tmp_path, cells) == []  # a re-run measures nothing again
    for label in ("vilt", "vilt@init", "siglip"):
        assert (tmp_path / PUBLISHED_DIR / label / "easyvqa" / "alignment.csv").is_file()
    tables = published_tables(tmp_path)
    assert set(tables["run"]) == {"vilt", "vilt@init", "siglip"}
    # SigLIP has no image summary token: its cls view is dropped, not an error
    assert set(tables.loc[tables["run"] == "siglip", "view"]) == {"mean"}
    trained = tables[(tables["run"] == "vilt") & (tables["measure"] == "cka_linear")]
    fresh = tables[(tables["run"] == "vilt@init") & (tables["measure"] == "cka_linear")]
    assert not trained["value"].reset_index(drop=True).equals(fresh["value"].reset_index(drop=True))
    page = ExperimentReport(tmp_path).render()
    assert "Published models beside ours" in page and "Tables: published models" in page
    captions = re.findall(r"<figcaption>([^<]*by relative depth)", page)
    assert [c.split()[0] for c in captions] == ["cka_linear", "mutual_knn"]  # one per measure


def test_relative_depth_puts_models_of_any_depth_on_one_axis():
    table = pd.DataFrame(
        {
            "run": ["ours"] * 4 + ["bridgetower"] * 6 + ["one"],
            "layer": [f"fusion.{i}" for i in range(4)] + [f"fusion.{i}" for i in range(6)]
            + ["encoder.0"],
        }
    )  # fmt: skip
    depth = relative_depth(table)
    assert depth[:4].tolist() == [0, 1 / 3, 2 / 3, 1]
    assert depth[4:10].tolist() == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert depth[10] == 1.0

"""Experiment files: grid expansion, objective subsets, shared pretraining, clear errors,
and every config file shipped in configs/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.experiments.conftest import tiny_experiment
from vilalign.config import ConfigError, read_mapping
from vilalign.experiments.demo import DEMO
from vilalign.experiments.spec import (
    expand_grid,
    load_experiment,
    objective_names,
    objectives_overrides,
)
from vilalign.train.config import (
    FinetuneConfig,
    MultiTaskConfig,
    PretrainConfig,
    is_multitask_mapping,
    load_run_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_grid_is_the_product_of_its_axes(tmp_path):
    exp = tiny_experiment(
        tmp_path,
        grid={
            "baselines": ["vilbert", "no_coattention"],
            "pretraining": ["none", "mlm+ap"],
            "seeds": [0, 1],
        },
    )
    cells = expand_grid(exp)
    assert len(cells) == 8
    assert len({c.key for c in cells}) == 8
    assert {c.group for c in cells} == {
        "vilbert_pt-none", "vilbert_pt-mlm+ap", "no_coattention_pt-none", "no_coattention_pt-mlm+ap"
    }  # fmt: skip
    for c in cells:
        assert c.finetune.train.seed == c.seed
        assert (c.pretrain is None) == (c.labels["pretraining"] == "none")
    no_coattn = next(c for c in cells if c.labels["baseline"] == "no_coattention")
    assert no_coattn.finetune.model.layer_kinds == ["self_attention", "self_attention"]
    pre = next(c for c in cells if c.pretrain is not None)
    assert pre.pretrain.objectives.active == ["mlm", "ap"]
    assert pre.pretrain.train.seed == pre.seed


def test_pretraining_is_shared_by_cells_that_differ_only_after_it(tmp_path):
    exp = tiny_experiment(
        tmp_path,
        grid={
            "pretraining": ["ap"],
            "axes": {"lr": {"low": {"finetune": {"optim": {"lr": 1e-4}}},
                            "high": {"finetune": {"optim": {"lr": 1e-3}}}}},
        },
    )  # fmt: skip
    cells = expand_grid(exp)
    assert [c.labels["lr"] for c in cells] == ["low", "high"]
    assert [c.finetune.optim.lr for c in cells] == [1e-4, 1e-3]
    assert cells[0].pretrain_key == cells[1].pretrain_key


def test_coattention_axis_collapses_for_baselines_without_it(tmp_path):
    exp = tiny_experiment(
        tmp_path,
        model={"depth": 3},
        grid={"baselines": ["vilbert", "no_coattention"], "coattention_layers": [[0], [2]]},
    )
    cells = expand_grid(exp)
    assert [c.key for c in cells] == ["vilbert_pt-none_ca-0_s0", "vilbert_pt-none_ca-2_s0",
                                      "no_coattention_pt-none_ca-none_s0"]  # fmt: skip
    assert cells[1].finetune.model.coattention_layers == [2]


def test_different_cells_with_one_name_are_an_error(tmp_path):
    # Two dataset entries named alike would share a folder; one used to vanish silently.
    datasets = [{"name": "easyvqa", "limit": 48}, {"name": "easyvqa", "limit": 96}]
    exp = tiny_experiment(tmp_path, grid={"datasets": datasets})
    with pytest.raises(ConfigError, match="share the name 'vilbert_pt-none_easyvqa_s0'"):
        expand_grid(exp)


def test_objective_subsets():
    assert objective_names("all") == ["mlm", "mim", "ap"]
    assert objective_names("mlm+ap") == ["mlm", "ap"]
    assert objective_names("none") == []
    weights = objectives_overrides({"mim": {"weight": 0.5}}, "mim+ap")
    assert {k: v["weight"] for k, v in weights.items()} == {
        "mlm": 0.0, "mim": 0.5, "ap": 1.0, "itc": 0.0
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown objective"):
        objective_names("mlm+xyz")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"grid": {"baselines": ["vilbertt"]}}, "grid.baselines"),
        ({"grid": {"pretraining": ["mlm+foo"]}}, "grid.pretraining"),
        ({"finetune": {"model": {"depth": 2}}}, "finetune"),
        ({"finetune": {"train": {"epochz": 2}}}, "train.epochz"),
        ({"grid": {"seeds": []}}, "grid.seeds"),
        ({"analysis": {"measures": ["cka_lineer"]}}, "analysis.measures"),
        ({"tune": {"space": {"optim.lr": {"type": "float", "low": 0, "high": 1}}}}, "tune.space"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path, patch, message):
    path = tmp_path / "bad.yaml"
    data = {"name": "x", **patch}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def _kind(path: Path, data: dict) -> str:
    if "grid" in data or "name" in data:
        return "experiment"
    if is_multitask_mapping(data):
        return "multitask"
    return "pretrain" if "objectives" in data or path.name.startswith("pretrain") else "finetune"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.y*ml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    data = read_mapping(path)
    kind = _kind(path, data)
    if kind == "experiment":
        exp = load_experiment(path)
        assert expand_grid(exp)
    else:
        runs = {"pretrain": PretrainConfig, "multitask": MultiTaskConfig}
        load_run_config(path, runs.get(kind, FinetuneConfig))


def test_demo_file_matches_the_demo_command():
    assert read_mapping(CONFIGS / "demo.yaml") == DEMO


def test_too_few_samples_for_a_neighbour_measure_is_caught_before_training():
    from vilalign.experiments.spec import AnalysisConfig

    with pytest.raises(ValueError, match=r"n_samples: 8 is too few for mutual_knn .*at least 11"):
        AnalysisConfig(n_samples=8, measures=["mutual_knn"])
    AnalysisConfig(n_samples=11, measures=["mutual_knn"], resamples=0)
    AnalysisConfig(n_samples=8, measures=["cka_linear"])
    # with intervals, k-NN measures subsample half the rows
    with pytest.raises(ValueError, match="at least 22"):
        AnalysisConfig(n_samples=21, measures=["mutual_knn"], resamples=10)
    AnalysisConfig(n_samples=22, measures=["mutual_knn"], resamples=10)

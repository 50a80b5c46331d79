"""Datasets declare themselves once: a new dataset is one module, and the config, the
splits, build_dataset and fine-tuning all read its declaration."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from vilalign.config import ConfigError
from vilalign.data import DataConfig, DatasetInfo, TaskInfo, registry

from .helpers import write_image

# The whole of a new dataset: a reader and its declaration, in a module of its own.
TOY_MODULE = '''
from pathlib import Path

from vilalign.data.base import Record, SplitDataset
from vilalign.data.registry import register_dataset
from vilalign.data.types import DatasetInfo, TaskInfo

COLOURS = ("red", "green", "blue")


def records(root, split):
    """<root>/<split>/<colour>-<n>.png; the caption names the colour, the label is its index."""
    out = []
    for path in sorted((Path(root) / split).glob("*.png")):
        colour = path.stem.split("-")[0]
        out.append(Record(id=path.stem, image=str(path), image_id=path.stem,
                          text=f"a {colour} square", target=COLOURS.index(colour)))
    return out


@register_dataset
class ToySquares(SplitDataset):
    info = DatasetInfo(name="toy_squares", splits=("train", "test"), num_labels=3,
                       task=TaskInfo(loss="multiclass", monitor="accuracy"))
    read_records = staticmethod(records)
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """Import TOY_MODULE from a temporary folder; the registry is restored afterwards."""
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "toy_squares_data.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.delitem(sys.modules, "toy_squares_data", raising=False)
    module = importlib.import_module("toy_squares_data")
    yield module
    sys.modules.pop("toy_squares_data", None)


def _toy_images(root: Path) -> Path:
    for split, n in (("train", 12), ("test", 6)):
        for i in range(n):
            colour = ("red", "green", "blue")[i % 3]
            write_image(root / split / f"{colour}-{i}.png", colour)
    return root


def test_a_new_dataset_is_one_module_and_fine_tunes(toy_module, tmp_path):
    from vilalign.train.config import FinetuneConfig
    from vilalign.train.run import run_finetuning
    from vilalign.train.tasks import TASKS

    root = _toy_images(tmp_path / "squares")
    assert "toy_squares" in registry.SPLITS and TASKS["toy_squares"].monitor == "accuracy"
    cfg = FinetuneConfig(
        model={"text": {"num_layers": 1, "max_length": 12}, "image": {"img_size": 32, "depth": 1},
               "depth": 2, "coattention_layers": [1]},
        data={"name": "toy_squares", "root": str(root),
              "cache": {"dir": str(tmp_path / "cache"), "progress": False}},
        train={"batch_size": 12, "epochs": 1, "progress": False},
        splits={"val_fraction": 0.25},
    )  # fmt: skip
    result = run_finetuning(cfg, tmp_path / "run")
    assert result.fit.history[-1]["train/loss"] > 0  # one optimisation step on 9 samples
    assert 0.0 <= result.test_metrics["test/accuracy"] <= 1.0  # the test split, 6 squares
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["num_labels"] == 3  # the head sized from the declaration
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["splits"] == {"train": "train", "val": "25% of train", "test": "test"}


def test_the_declaration_is_what_everyone_reads(toy_module, tmp_path, data_config):
    from vilalign.data import build_dataset, build_image_transform, is_train_split

    root = _toy_images(tmp_path / "squares")
    cfg = DataConfig(name="toy_squares", root=str(root), cache={"enabled": False})
    ds = build_dataset(cfg, "test", build_image_transform(data_config, cfg, "test"))
    assert ds.num_labels == 3 and ds.name == "toy_squares-test" and len(ds) == 6
    assert [ds[i].text for i in range(3)] == ["a blue square", "a blue square", "a green square"]
    assert is_train_split("toy_squares", "train") and not is_train_split("toy_squares", "test")
    with pytest.raises(ConfigError, match=r"'val' is not a split of toy_squares"):
        build_dataset(cfg, "val", build_image_transform(data_config, cfg, "test"))
    with pytest.raises(ConfigError, match="root: dataset 'toy_squares' needs a root"):
        from vilalign.config import validate

        validate(DataConfig, {"name": "toy_squares"})


def test_registration_errors_name_the_dataset(toy_module):
    class Other(toy_module.ToySquares):
        pass

    with pytest.raises(ValueError, match="'toy_squares' registered twice: ToySquares and"):
        registry.register_dataset(Other)
    registry.register_dataset(toy_module.ToySquares)  # the same class again: a no-op

    class NoInfo:
        pass

    with pytest.raises(TypeError, match="NoInfo: a dataset class needs `info`"):
        registry.register_dataset(NoInfo)
    with pytest.raises(ValueError, match="unknown loss kind 'hinge'"):
        TaskInfo(loss="hinge", monitor="accuracy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a name and at least one split"):
        DatasetInfo(name="x", splits=())


def test_an_unknown_name_lists_the_registered_ones():
    from vilalign.config import validate

    with pytest.raises(
        ConfigError, match=r"name: .*unknown dataset 'cifar10' \(allowed: .*easyvqa"
    ):
        validate(DataConfig, {"name": "cifar10"})
    assert registry.dataset_info("coco_karpathy").several_captions
    assert not registry.dataset_info("easyvqa").needs_root

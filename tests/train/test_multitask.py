"""Multi-dataset fine-tuning: visit order, per-dataset batch sizes and metrics, exact resume,
the run file's errors, and `vilalign finetune` on a two-dataset run file."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tests.data.helpers import write_image

from vilalign.cli import main
from vilalign.config import ConfigError, model_config
from vilalign.model import build_model
from vilalign.train import checkpoint as ckpt
from vilalign.train.config import MultiTaskConfig, OptimConfig, TrainConfig, load_run_config
from vilalign.train.loop import seed_everything
from vilalign.train.multitask import (
    DATASET_KEY,
    MultiTaskBatches,
    MultiTaskModule,
    MultiTaskTrainer,
    TaskData,
    visit_order,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Hidden 32, one layer per stream, one co-attention layer, 32-pixel images.
TINY = {
    "text": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
             "max_length": 12},
    "image": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "depth": 1, "coattention_layers": [0], "coattention_size": 32, "num_heads": 2,
    "pooled_size": 32,
}  # fmt: skip
FOOD = ["apple_pie", "sushi", "waffles"]


class Killed(Exception):
    """Stands in for the process being killed."""


# ---------------------------------------------------------------------------- fixtures


def _hateful_memes(root: Path) -> Path:
    """Hateful-Memes layout: 12 train, 6 dev_seen, 4 dev_unseen memes, labels alternating."""
    n = 0
    for split, count in {"train": 12, "dev_seen": 6, "dev_unseen": 4}.items():
        lines = []
        for _ in range(count):
            n += 1
            write_image(root / "img" / f"{n}.png", f"hm{n}")
            lines.append(json.dumps({"id": n, "img": f"img/{n}.png", "text": f"meme {n}",
                                     "label": n % 2}))  # fmt: skip
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _food101(root: Path) -> Path:
    """UPMC Food-101 layout: 8 train and 3 test recipes of three classes."""
    (root / "texts").mkdir(parents=True)
    for split, count in {"train": 8, "test": 3}.items():
        rows = []
        for i in range(count):
            cls = FOOD[i % 3]
            rows.append((f"{cls}_{i}.jpg", f"a recipe for {cls.replace('_', ' ')}", cls))
            write_image(root / "images" / split / cls / f"{cls}_{i}.jpg", f"food{split}{i}")
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def _run_file(tmp_path: Path, **changes) -> dict:
    cache = {"enabled": False}
    data = {
        "preset": "tiny",
        "model": TINY,
        "datasets": {
            "memes": {
                "task": "hateful_memes",
                "data": {
                    "name": "hateful_memes",
                    "root": str(_hateful_memes(tmp_path / "hm")),
                    "cache": cache,
                },
                "splits": {"val": "dev_seen", "test": "dev_unseen"},
                "batch_size": 4,
            },
            "food": {
                "data": {
                    "name": "food101",
                    "root": str(_food101(tmp_path / "food")),
                    "cache": cache,
                    "augment": {"enabled": False},
                },
                "splits": {"val_fraction": 0.25},
                "batch_size": 2,
                "loss_weight": 0.5,
            },
        },
        "train": {"epochs": 2, "progress": False, "seed": 0},
        "optim": {"lr": 1e-3},
    }
    return {**data, **changes}


def _trainer(make_config, toy_dataset, collate, run_dir, mode="round_robin", **train):
    """Two in-memory datasets (12 and 7 samples) with batch sizes 3 and 2."""
    seed_everything(0)
    model = build_model(make_config(num_labels=0))
    task = MultiTaskModule(model, {"a": "easyvqa", "b": "food101"}, {"a": 4, "b": 4})
    data = MultiTaskBatches(
        [TaskData("a", toy_dataset(12), 3, collate), TaskData("b", toy_dataset(7, 1), 2, collate)],
        mode,
        seed=0,
    )
    cfg = TrainConfig(epochs=2, progress=False, log_every_n_steps=2, **train)
    val = {"a": toy_dataset(4, seed=2), "b": toy_dataset(4, seed=3)}
    return MultiTaskTrainer(task, cfg, OptimConfig(lr=1e-3), run_dir, data, val)


# ---------------------------------------------------------------------------- sampling


def test_round_robin_alternates_and_each_batch_has_its_datasets_size(
    make_config, toy_dataset, collate, tmp_path
):
    trainer = _trainer(make_config, toy_dataset, collate, tmp_path)
    data = trainer.data
    batches = list(data.batches(epoch=0))
    # One pass over the dataset with more batches (a: 12 / 3 = 4), each dataset taking turns.
    assert data.epoch_length == trainer.steps_per_epoch == 8
    assert [b.extras[DATASET_KEY] for b in batches] == ["a", "b"] * 4
    assert [len(b) for b in batches] == [3, 2] * 4
    seen_a = [i for b in batches if b.extras[DATASET_KEY] == "a" for i in b.ids]
    assert sorted(seen_a) == sorted(f"toy-{i}" for i in range(12))  # one pass, each once
    seen_b = [i for b in batches if b.extras[DATASET_KEY] == "b" for i in b.ids]
    assert set(seen_b) == {f"toy-{i}" for i in range(7)}  # 8 draws: a second pass begins
    # Started part-way (a resume), the rest of the epoch is the same batches.
    rest = list(data.batches(epoch=0, start=5))
    assert [b.ids for b in rest] == [b.ids for b in batches[5:]]
    assert [b.ids for b in data.batches(epoch=1)] != [b.ids for b in batches]  # reshuffled


def test_proportional_visits_follow_the_sizes_and_repeat_with_the_seed():
    n = 4000
    order = visit_order([300, 100], "proportional", n, seed=7, epoch=0)
    share = Counter(order)[0] / n
    # Binomial(4000, 0.75): standard deviation 0.0068; 5 of them is a bound no seed breaks.
    assert abs(share - 0.75) < 0.035
    assert order == visit_order([300, 100], "proportional", n, seed=7, epoch=0)
    assert order != visit_order([300, 100], "proportional", n, seed=7, epoch=1)
    assert visit_order([3, 1], "round_robin", 5, seed=0, epoch=0) == [0, 1, 0, 1, 0]


# ---------------------------------------------------------------------------- resume


def test_kill_and_resume_ends_identical_to_an_uninterrupted_run(
    make_config, toy_dataset, collate, tmp_path
):
    kw = {"checkpoint": {"every_n_steps": 3}}
    whole = _trainer(make_config, toy_dataset, collate, tmp_path / "whole", "proportional", **kw)
    whole.fit()

    def kill_after_step_10(trainer) -> None:
        if trainer.progress.step == 10:
            raise Killed

    broken = _trainer(make_config, toy_dataset, collate, tmp_path / "broken", "proportional", **kw)
    broken.step_callbacks.append(kill_after_step_10)
    with pytest.raises(Killed):
        broken.fit()
    assert ckpt.read_pointer(tmp_path / "broken" / "checkpoints")["step"] == 9  # mid epoch 2
    resumed = _trainer(make_config, toy_dataset, collate, tmp_path / "broken", "proportional", **kw)
    seed_everything(123)
    resumed.fit(resume=True)
    a, b = whole.task.state_dict(), resumed.task.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = ("samples_per_s", "data_wait_share")
    for h1, h2 in zip(whole.history, resumed.history, strict=True):
        assert {k: v for k, v in h1.items() if not k.endswith(timing)} == {
            k: v for k, v in h2.items() if not k.endswith(timing)
        }


# ---------------------------------------------------------------------------- the run


def test_finetune_command_trains_two_datasets_and_reports_both(tmp_path, capsys, monkeypatch):
    visits: list[tuple[str, int]] = []
    forward = MultiTaskModule.forward

    def recorded(self, batch):
        visits.append((batch.extras[DATASET_KEY], len(batch)))
        return forward(self, batch)

    monkeypatch.setattr(MultiTaskModule, "forward", recorded)
    run_file = _run_file(
        tmp_path, alignment={"n_samples": 4, "views": ["cls"], "measures": ["cka_linear"]}
    )
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(run_file, sort_keys=False))
    run_dir = tmp_path / "run"
    assert main(["finetune", str(tmp_path / "multi.yaml"), "--run-dir", str(run_dir)]) == 0

    # memes: 12 / 4 = 3 batches; food: 6 (8 less a 25 % hold-out) / 2 = 3; in turns.
    assert visits == [("memes", 4), ("food", 2)] * 3 * 2
    out = capsys.readouterr().out
    assert "test/memes/auroc" in out and "test/food/accuracy" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "val/mean" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:  # per-dataset metrics and train losses, every epoch
        for key in ("val/memes/auroc", "val/memes/loss", "val/food/accuracy", "val/food/loss",
                    "train/memes/loss", "train/food/loss", "train/loss"):  # fmt: skip
            assert key in r, key
        assert r["val/mean"] == pytest.approx((r["val/memes/auroc"] + r["val/food/accuracy"]) / 2)
    results = json.loads((run_dir / "results.json").read_text())
    assert {"test/memes/auroc", "test/food/accuracy", "test/mean"} <= set(results["test"])
    assert results["splits"]["memes"]["test"] == "dev_unseen"
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "metrics.png").is_file()
    # The alignment analysis ran per dataset, every epoch, its rows tagged.
    for name in ("memes", "food"):
        table = pd.read_csv(run_dir / "alignment" / name / "alignment_epoch2.csv")
        assert set(table["dataset"]) == {name} and len(table)
        assert f"align/{name}/" in " ".join(results["last_epoch"])
    assert load_run_config(run_dir / "config.json", MultiTaskConfig).sampling.mode == "round_robin"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"target_batch_size": 64}}, "train.target_batch_size: not supported"),
        ({"sampling": {"mode": "random"}}, "sampling.mode"),
        ({"sampling": {"steps": 3}}, "sampling.steps: unknown field"),
        ({"datasets": {"a": {"data": {"name": "easyvqa"}, "batchsize": 2}}},
         "datasets.a.batchsize: unknown field"),
        ({"datasets": {"a": {"data": {"name": "easyvqa"}, "task": "gqa"}}},
         "task: unknown task 'gqa'"),
        ({"datasets": {"mean": {"data": {"name": "easyvqa"}}}}, "datasets.mean: a dataset name"),
        ({"datasets": {"a": {"data": {"name": "food101"}}}}, "root: dataset 'food101' needs"),
        ({"datasets": {}}, "datasets:"),
    ],
)  # fmt: skip
def test_run_file_errors_name_the_field(tmp_path, change, message):
    path = tmp_path / "multi.yaml"
    base = {"preset": "tiny", "datasets": {"a": {"data": {"name": "easyvqa"}}}}
    path.write_text(yaml.safe_dump({**base, **change}))
    with pytest.raises(ConfigError) as err:
        load_run_config(path, MultiTaskConfig)
    assert message in str(err.value)


def test_monitor_may_name_one_datasets_metric(make_config, toy_dataset, collate, tmp_path):
    trainer = _trainer(make_config, toy_dataset, collate, tmp_path, monitor="val/b/accuracy",
                       monitor_mode="max", max_steps=2)  # fmt: skip
    assert trainer.fit().best_value == trainer.history[-1]["val/b/accuracy"]
    assert _trainer(make_config, toy_dataset, collate, tmp_path / "x").monitor == "val/mean"
    task = MultiTaskModule(build_model(model_config("tiny", **TINY)), {"a": "vqa"}, {"a": 3})
    assert task.monitor_mode == "max" and set(task.heads) == {"a"}


def test_train_batch_size_is_the_default_of_each_dataset():
    """A dataset without its own batch_size takes train.batch_size, written out in full."""
    cfg = MultiTaskConfig.model_validate(
        {
            "train": {"batch_size": 8},
            "datasets": {
                "a": {"data": {"name": "easyvqa"}},
                "b": {"data": {"name": "easyvqa"}, "batch_size": 3},
            },
        }
    )
    assert {n: d.batch_size for n, d in cfg.datasets.items()} == {"a": 8, "b": 3}
    again = MultiTaskConfig.model_validate(cfg.model_dump())
    assert again.datasets["a"].batch_size == 8


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("multitask_*.yaml")), ids=lambda p: p.name)
def test_shipped_multitask_configs_validate(path):
    cfg = load_run_config(path, MultiTaskConfig)
    assert len(cfg.datasets) >= 2

"""Writing the alignment files of one analysis."""

from __future__ import annotations

import pandas as pd
import pytest

from vilalign.analysis.align import RunInfo
from vilalign.analysis.pipeline import write_alignment
from vilalign.analysis.report import COLUMNS


def _table() -> pd.DataFrame:
    row = dict.fromkeys(COLUMNS, "") | {"seed": 0, "epoch": 1, "value": 0.5}
    return pd.DataFrame([row] * 3, columns=list(COLUMNS))


def test_a_write_killed_midway_leaves_no_truncated_table(tmp_path, monkeypatch):
    # A kill during the epoch callback (which runs after the epoch's checkpoint, so a
    # resumed run does not redo it) must not leave a partial CSV for the summaries to read.
    def dies_midway(self, path, *args, **kwargs):
        with open(path, "w") as f:
            f.write("run,seed,ep")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_alignment(_table(), None, tmp_path, RunInfo(epoch=1))
    assert list(tmp_path.iterdir()) == []


def test_alignment_files_are_written_whole(tmp_path):
    matrix = pd.DataFrame([[0.1, 0.2]], index=["fusion.0"], columns=["fusion.0", "fusion.1"])
    files = write_alignment(_table(), matrix, tmp_path, RunInfo(epoch=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    assert len(pd.read_csv(files[0])) == 3 and len(pd.read_parquet(files[1])) == 3
    assert pd.read_csv(files[2], index_col=0).loc["fusion.0", "fusion.1"] == 0.2


@pytest.mark.parametrize(
    ("captions", "caption", "ids"),
    [("each", None, [f"{i}#{j}" for i in range(4) for j in range(3)]),
     ("average", None, ["0", "1", "2", "3"]),
     ("each", 2, ["0#2", "1#2", "2#2", "3#2"])],
)  # fmt: skip
def test_caption_sets_measured_per_caption_averaged_or_one_caption(
    tmp_path, captions, caption, ids
):
    import torch
    from tests.data.helpers import write_flickr_karpathy

    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
    from vilalign.config import model_config
    from vilalign.data import DataConfig
    from vilalign.model import build_model, load_tokenizer

    root = write_flickr_karpathy(tmp_path, images=4, captions=3)
    cfg = model_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    data = DataConfig(name="flickr30k_karpathy", root=str(root), caption=caption)
    spec = AlignmentSpec(data, "test", n_samples=12, views=("cls",), measures=("cka_linear",),
                         captions=captions)  # fmt: skip
    result = run_alignment(model, load_tokenizer(cfg.text), spec, RunInfo(), progress=False)
    assert result.representations.ids == ids
    assert len(result.representations.get("fusion.3", "image", "cls")) == len(ids)


def test_caption_options_are_checked():
    from vilalign.analysis.pipeline import AlignmentSpec
    from vilalign.data import DataConfig

    with pytest.raises(ValueError, match="captions"):
        AlignmentSpec(DataConfig(), "test", captions="first")
    with pytest.raises(ValueError, match="tokens"):
        AlignmentSpec(DataConfig(), "test", views=("cls", "tokens"), captions="average")
    with pytest.raises(ValueError, match="caption: only the Karpathy"):
        DataConfig(name="easyvqa", caption=1)


def test_one_epoch_callback_measures_each_target_into_its_files_and_metrics(tmp_path):
    # One target as a grid cell uses it (loader built from the spec, null bands), one as
    # a multi-dataset run does (its own loader, a per-dataset metric prefix).
    from types import SimpleNamespace

    import torch
    from tests.data.helpers import write_flickr_karpathy

    from vilalign.analysis.pipeline import (
        AlignmentSpec,
        AlignmentTarget,
        EpochAlignment,
        alignment_loader,
        evaluation_dataset,
    )
    from vilalign.config import model_config
    from vilalign.data import DataConfig
    from vilalign.model import build_model, load_tokenizer

    root = write_flickr_karpathy(tmp_path, images=4, captions=3)
    cfg = model_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokenizer = load_tokenizer(cfg.text)
    data = DataConfig(name="flickr30k_karpathy", root=str(root))
    spec = AlignmentSpec(data, "test", n_samples=12, views=["cls"], measures=["cka_linear"])
    own = alignment_loader(evaluation_dataset(model, data, "test"), tokenizer, spec)
    cell = AlignmentTarget(spec, tmp_path / "cell", RunInfo("grid", 0, None, "f"), null_band=3)
    multi = AlignmentTarget(spec, tmp_path / "f", RunInfo(dataset="f"), "align/f/", loader=own)
    callback = EpochAlignment([cell, multi], tokenizer)
    ctx = SimpleNamespace(task=SimpleNamespace(model=model), epoch=2, metrics={"val/loss": 1.0})
    values = callback(ctx)
    assert {k.rsplit("/", 3)[0] for k in values} == {"align", "align/f"}
    assert ctx.metrics == {"val/loss": 1.0, **values}  # later callbacks (pruning) read them
    assert sorted(p.name for p in (tmp_path / "cell").iterdir()) == [
        "alignment_epoch2.csv", "alignment_epoch2.parquet", "alignment_epoch2_layer_matrix.csv",
        "nulls_epoch2.csv",
    ]  # fmt: skip
    assert not (tmp_path / "f" / "nulls_epoch2.csv").exists()
    first = callback.loader(model)
    assert callback.measure(model, 3) == values and callback.loader(model) is first
    table = pd.read_csv(tmp_path / "cell" / "alignment_epoch3.csv")
    assert set(table.run) == {"grid"} and set(table.epoch) == {3}

"""``vilalign data``: dataset names and the sample ids that `explain --ids` takes."""

from __future__ import annotations

from vilalign.cli import main
from vilalign.data.easyvqa import question_records


def test_data_ids_lists_easyvqa_test_ids_with_their_text(capsys):
    assert main(["data", "ids", "easyvqa", "test", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [f"{r.id}\t{r.text}" for r in question_records("test")[:3]]
    assert lines == expected and lines[0].startswith("test-0\t")


def test_data_ids_names_an_unknown_dataset_or_split(capsys):
    assert main(["data", "ids", "easyvqaa", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vilalign data: error:") and "'easyvqaa'" in err
    assert main(["data", "ids", "easyvqa", "dev"]) == 2
    assert "'dev' is not a split of easyvqa (allowed: train, test)" in capsys.readouterr().err


def test_data_ids_of_a_shard_stream_is_refused(tmp_path, capsys):
    args = ["data", "ids", "captions_shards", "train", "--root", str(tmp_path / "{0..1}.tar")]
    assert main(args) == 2
    assert "no id list" in capsys.readouterr().err


def test_data_list_shows_every_dataset_with_its_splits(capsys):
    from vilalign.data import SPLITS

    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(SPLITS)
    assert "easyvqa" in lines[0] and lines[0].endswith("train, test")

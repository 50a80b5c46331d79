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
    easyvqa = next(line for line in lines if line.split()[0] == "easyvqa")
    assert easyvqa.endswith("train, test")


def test_data_ids_of_a_dataset_in_a_folder(tmp_path, capsys):
    from tests.data.helpers import write_flickr_karpathy

    root = write_flickr_karpathy(tmp_path / "flickr", images=2, captions=2)
    assert main(["data", "ids", "flickr30k_karpathy", "test", "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "0#0\tpicture 0 caption 0",
        "0#1\tpicture 0 caption 1",
        "1#0\tpicture 1 caption 0",
        "1#1\tpicture 1 caption 1",
    ]
    assert main(["data", "ids", "flickr30k_karpathy", "test"]) == 2  # no --root
    assert "root" in capsys.readouterr().err


def test_a_long_text_is_listed_on_one_cut_line():
    from vilalign.commands.data import TEXT_WIDTH, _one_line

    plot = "A man\nwalks.\t" * 40
    line = _one_line(plot)
    assert "\n" not in line and "\t" not in line
    assert len(line) == TEXT_WIDTH and line.endswith("…") and line.startswith("A man walks. A")

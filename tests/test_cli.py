from __future__ import annotations

import pytest

from vilalign.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "vilalign demo" in out


def test_info_describes_layers(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "fusion layer 1: co-attention" in out and "fusion layer 0: self-attention" in out


def test_bad_preset_is_a_clear_error(capsys):
    assert main(["info", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "tiny, base, minilm" in err

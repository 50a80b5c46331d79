"""A damaged or incomplete model folder is one clear error naming the file and the field,
never a silent default that changes the model nor a bare safetensors message."""

from __future__ import annotations

import json

import pytest
import torch

from vilalign.model import CheckpointError, load_pretrained, save_pretrained
from vilalign.model.checkpoint import CONFIG, TEXT_CONFIG, WEIGHTS


@pytest.fixture
def saved(tiny_model, tmp_path):
    return save_pretrained(tiny_model, tmp_path / "ckpt")


def _edit_config(folder, edit):
    path = folder / CONFIG
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_missing_field_that_changes_the_model_is_named(saved):
    path = _edit_config(saved, lambda d: d.pop("pooling"))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(saved)
    message = str(err.value)
    assert message.startswith(f"{path}: missing field 'pooling', which changes the model")
    assert "default 'cls'; allowed: 'cls', 'mean'" in message and "\n" not in message


def test_missing_nested_field_is_named_by_its_path(saved):
    _edit_config(saved, lambda d: d["text"].pop("max_length"))
    with pytest.raises(CheckpointError, match=r"missing field 'text\.max_length'"):
        load_pretrained(saved)


def test_fields_that_cannot_change_the_model_may_be_missing(saved, tiny_model, inputs):
    _edit_config(saved, lambda d: [d.pop(k) for k in ("dropout", "head_dropout")])
    ids, mask, pixels = inputs
    loaded = load_pretrained(saved).eval()
    assert torch.equal(loaded(ids, mask, pixels).logits, tiny_model(ids, mask, pixels).logits)


def test_unknown_field_is_named(saved):
    _edit_config(saved, lambda d: d.update(poolin="mean"))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'poolin': unknown field"):
        load_pretrained(saved)


def test_broken_config_json_names_the_file_and_line(saved):
    text = (saved / CONFIG).read_text()
    (saved / CONFIG).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=rf"{CONFIG}:\d+: not valid JSON"):
        load_pretrained(saved)
    (saved / TEXT_CONFIG).write_text("{")
    (saved / CONFIG).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{TEXT_CONFIG}:1: not valid JSON"):
        load_pretrained(saved)


@pytest.mark.parametrize("cut", [10, 4000])
def test_truncated_weights_are_named(saved, cut):
    path = saved / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(CheckpointError) as err:
        load_pretrained(saved)
    assert str(err.value) == (
        f"{path}: truncated: {len(data) - cut} bytes where its header promises {len(data)}: "
        "copy or export the model again"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x10\x00", "truncated"), (b"\x40" + b"\x00" * 7 + b"{not json" + b" " * 60, "not a saf")],
)
def test_weights_that_are_not_safetensors(saved, content, message):
    (saved / WEIGHTS).write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: {message}"):
        load_pretrained(saved)


def test_missing_weights_file_is_named(saved):
    (saved / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{WEIGHTS}: file not found"):
        load_pretrained(saved)


def test_the_command_line_prints_one_line_and_exits_2(saved, capsys):
    from vilalign.cli import main

    path = saved / WEIGHTS
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["attention", "--checkpoint", str(saved), "--n-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: truncated" in err and "Traceback" not in err

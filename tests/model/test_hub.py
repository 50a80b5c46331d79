"""The Hugging Face Hub round trip, offline: save_pretrained / from_pretrained on local
folders, push_to_hub through a stand-in for HfApi, and the generated model card."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from vilalign.config import model_config
from vilalign.model import CardInfo, VilbertModel, from_pretrained

from .conftest import make_model

ANSWERS = ["circle", "green", "red", "gray", "yes"]


@pytest.fixture
def labelled():
    return make_model(model_config("tiny", num_labels=5, label_names=ANSWERS))


def test_save_and_from_pretrained_methods(labelled, inputs, tmp_path, tokenizer):
    folder = labelled.save_pretrained(tmp_path / "m", tokenizer=tokenizer)
    loaded = VilbertModel.from_pretrained(folder)
    assert not loaded.training  # as transformers' from_pretrained returns it
    ids, mask, pixels = inputs
    assert torch.equal(loaded(ids, mask, pixels).logits, labelled(ids, mask, pixels).logits)
    assert loaded.config.label_names == ANSWERS  # label names travel with the model
    assert {p.name for p in folder.iterdir()} >= {
        "config.json", "model.safetensors", "README.md", "tokenizer", "text_config.json",
    }  # fmt: skip


def test_model_card_metadata_and_facts(labelled, tmp_path):
    info = CardInfo(
        preset="tiny",
        datasets=["easyvqa"],
        results={"test/accuracy": 0.968},
        init_from="some-org/vilalign-pretrained",
    )
    folder = labelled.save_pretrained(tmp_path / "m", card=info)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "vilalign"
    assert {"vilalign", "vilbert"} <= set(card.data.tags)  # the baseline is a tag
    assert card.data.datasets == ["easyvqa"] and card.data.metrics == ["accuracy"]
    assert card.data.base_model == "some-org/vilalign-pretrained"
    for fact in ("| preset | `tiny` |", "| baseline | `vilbert` |", "| trained on | easyvqa |",
                 "| test/accuracy | 0.9680 |", "`circle`, `green`", "coattention"):  # fmt: skip
        assert fact in card.text, fact


def test_card_names_the_baseline_of_other_variants(tmp_path):
    model = make_model(model_config("tiny", variant="no_coattention", coattention_layers=[]))
    card = ModelCard.load(model.save_pretrained(tmp_path / "m") / "README.md")
    assert "no_coattention" in card.data.tags and "| baseline | `no_coattention` |" in card.text
    assert card.data.datasets is None and card.data.metrics is None  # nothing invented


class LocalHub:
    """Stands in for huggingface_hub.HfApi: a 'repo' is a folder under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, repo_type, folder_path, commit_message, revision, create_pr):
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub_uploads_the_saved_folder(labelled, inputs, tmp_path, tokenizer):
    hub = LocalHub(tmp_path / "hub")
    url = labelled.push_to_hub(
        "me/tiny-easyvqa", tokenizer=tokenizer, card=CardInfo(preset="tiny"), api=hub,
        private=True,
    )  # fmt: skip
    assert url == "https://huggingface.co/me/tiny-easyvqa/commit/0"
    assert hub.calls[0] == ("create_repo", "me/tiny-easyvqa", True, True)
    assert hub.calls[1][:3] == ("upload_folder", "me/tiny-easyvqa", "model")
    pulled = from_pretrained(tmp_path / "hub" / "me" / "tiny-easyvqa")
    ids, mask, pixels = inputs
    assert torch.equal(pulled(ids, mask, pixels).logits, labelled(ids, mask, pixels).logits)
    assert "| preset | `tiny` |" in (tmp_path / "hub/me/tiny-easyvqa/README.md").read_text()


def test_unknown_folder_or_repo_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such model folder, and no Hub repo"):
        from_pretrained("nobody/not-a-model", local_files_only=True, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"runs/typo/model: no such model folder"):
        from_pretrained("runs/typo/model", local_files_only=True, cache_dir=tmp_path)

"""Model weights on disk: safetensors + the resolved config as JSON (+ the tokenizer and a
model card), in the layout the Hugging Face Hub expects.

``save_pretrained`` unwraps ``torch.compile`` (``_orig_mod``) and DDP (``module``)
wrappers first, so a checkpoint has plain keys and loads into eager and compiled
models alike. Files are written to a temporary name and renamed into place, so an
interrupted save never leaves a half-written file under the final name.

Loading checks the folder before building anything: a broken or incomplete
``config.json`` (a missing field is never filled with a default that changes the model),
a truncated or foreign ``model.safetensors`` — each is a :class:`CheckpointError` naming
the file and the field. ``from_pretrained`` / ``push_to_hub`` add the Hub round trip
(:mod:`vilalign.model.hub`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import BertConfig, PreTrainedTokenizerBase

from vilalign.config import ModelConfig
from vilalign.io import write_atomic, write_text_atomic
from vilalign.model.card import CARD, CardInfo, is_repo_id, render_model_card
from vilalign.model.vilbert import VilbertModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TEXT_CONFIG = "text_config.json"
TOKENIZER_DIR = "tokenizer"

#: Fields a checkpoint's config.json may lack, because their default cannot change what the
#: saved model computes: names shown for the outputs, a layer list derived from the variant
#: when absent, rates and switches that act only while training, where the encoders' first
#: weights came from (the checkpoint holds the weights). Every other field is required: a
#: default filled in silently (``pooling`` → ``cls``) would give another model.
OPTIONAL_FIELDS = frozenset(
    {
        "label_names", "fusion_layers", "dropout", "attention_dropout", "head_dropout",
        "text.freeze", "text.trainable_last_layers", "image.freeze",
        "image.trainable_last_layers", "image.pretrained", "image.weights_file",
    }
)  # fmt: skip


class CheckpointError(ValueError):
    """A model folder is incomplete or damaged; the message names the file and the field."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# ---------------------------------------------------------------------------- saving


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    card: CardInfo | None = None,
) -> Path:
    """Write weights, config, (optionally) tokenizer and the model card into ``directory``.

    ``card`` adds what the config cannot say (preset, training data, results) to the
    ``README.md``; without it the card says what the config knows.
    """
    model = unwrap(model)
    if not isinstance(model, VilbertModel):
        raise TypeError(f"save_pretrained expects a VilbertModel, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / WEIGHTS, lambda tmp: save_model(model, str(tmp)))
    write_text_atomic(directory / CONFIG, model.config.model_dump_json(indent=2))
    write_text_atomic(directory / TEXT_CONFIG, model.text_encoder.config.to_json_string())
    write_text_atomic(directory / CARD, render_model_card(model.config, card))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory / TOKENIZER_DIR)
    return directory


# ---------------------------------------------------------------------------- loading


def read_json_file(path: Path) -> Any:
    """A JSON file of a model folder; missing, broken or non-UTF-8 files name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None


def missing_fields(data: Mapping[str, Any], schema: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted names of the fields of ``schema`` (and its nested configs) that ``data``
    lacks, except :data:`OPTIONAL_FIELDS`."""
    missing = []
    for name, info in schema.model_fields.items():
        dotted = f"{prefix}{name}"
        nested = info.annotation if isinstance(info.annotation, type) else None
        if name not in data:
            if dotted not in OPTIONAL_FIELDS:
                missing.append(dotted)
        elif nested is not None and issubclass(nested, BaseModel) and isinstance(data[name], dict):
            missing += missing_fields(data[name], nested, f"{dotted}.")
    return missing


def _field_hint(dotted: str) -> str:
    """'default 'cls', allowed 'cls', 'mean'' for a field of ModelConfig."""
    schema: type[BaseModel] = ModelConfig
    *parents, name = dotted.split(".")
    for parent in parents:
        schema = schema.model_fields[parent].annotation  # type: ignore[assignment]
    info = schema.model_fields[name]
    literal = typing.get_origin(info.annotation) is typing.Literal
    allowed = typing.get_args(info.annotation) if literal else ()
    choices = f"; allowed: {', '.join(map(repr, allowed))}" if allowed else ""
    return f"default {info.get_default(call_default_factory=True)!r}{choices}"


def load_config(directory: str | Path) -> ModelConfig:
    """The checkpoint's ModelConfig; every failure is one line naming the file and field."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a vilalign checkpoint (no {CONFIG}): {directory}")
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = missing_fields(data, ModelConfig)
    if missing:
        raise CheckpointError(
            f"{path}: missing field {missing[0]!r}, which changes the model "
            f"({_field_hint(missing[0])}; a checkpoint saved before the field existed used its "
            f"default): add it to the file"
            + (f" ({len(missing) - 1} more missing: {missing[1:4]})" if len(missing) > 1 else "")
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<top level>"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise CheckpointError(
            f"{path}: field {field!r}: {message.removeprefix('Value error, ')}"
        ) from None


def check_weights_file(path: Path) -> None:
    """Fail early, naming ``path``, when the file is not a complete safetensors file.

    A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte
    range, then the data: a file shorter (or longer) than the header promises was cut off
    by an interrupted copy or download, which safetensors reports only as "incomplete
    metadata".
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (the model folder has no weights)")
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if n < 0 or 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated ({size} bytes; its header alone needs more): copy or "
                "export the model again"
            )
        try:
            header = json.loads(f.read(n))
            end = max(
                (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from None
    if size != 8 + n + end:
        what = "truncated" if size < 8 + n + end else "longer than its header says"
        raise CheckpointError(
            f"{path}: {what}: {size} bytes where its header promises {8 + n + end}: copy or "
            "export the model again"
        )


def load_text_config(directory: Path) -> BertConfig:
    """The text encoder's architecture, stored beside the weights (no download needed)."""
    data = read_json_file(directory / TEXT_CONFIG)
    if not isinstance(data, dict):
        raise CheckpointError(f"{directory / TEXT_CONFIG}: expected a JSON object")
    return BertConfig.from_dict(data)


def load_pretrained(directory: str | Path) -> VilbertModel:
    """Rebuild the model from ``directory`` without downloading anything."""
    directory = Path(directory)
    config = load_config(directory)
    text_config = load_text_config(directory)
    check_weights_file(directory / WEIGHTS)
    model = build_model(config, load_weights=False, text_config=text_config)
    try:
        missing, unexpected = load_model(model, directory / WEIGHTS, strict=False)
    except SafetensorError as err:  # what the header check above cannot see
        raise CheckpointError(f"{directory / WEIGHTS}: cannot read the weights: {err}") from None
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS} does not match the model: missing keys {sorted(missing)}, "
            f"unexpected keys {sorted(unexpected)}"
        )
    return model


def load_checkpoint_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model, else the one its config names."""
    from vilalign.model.encoders import load_tokenizer

    folder = Path(directory) / TOKENIZER_DIR
    if folder.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    return load_tokenizer(load_config(directory).text)


# ---------------------------------------------------------------------------- the Hub

#: What a model repo holds that vilalign reads (anything else in the repo is not fetched).
HUB_FILES = [CONFIG, TEXT_CONFIG, WEIGHTS, CARD, f"{TOKENIZER_DIR}/*"]


def resolve_folder(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """A local model folder: ``name_or_path`` itself when it is a folder, else the files of
    the Hub repo of that id, downloaded into (or found in) the Hugging Face cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    if not is_repo_id(str(name_or_path)):  # a path (runs/ft/model, ./x): no Hub to ask
        raise FileNotFoundError(f"{name_or_path}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=HUB_FILES,
            library_name="vilalign",
        )
    # (OSError: not found, offline, no access; ValueError: not a valid repo id)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{name_or_path}: no such model folder, and no Hub repo of that id could be "
            f"fetched ({reason})"
        ) from None
    return Path(folder)


def from_pretrained(name_or_path: str | Path, **hub: Any) -> VilbertModel:
    """The model of a local folder or of a Hub repo id (``hub``: see :func:`resolve_folder`),
    in eval mode, as ``PreTrainedModel.from_pretrained`` returns it."""
    return load_pretrained(resolve_folder(name_or_path, **hub)).eval()


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    card: CardInfo | None = None,
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool | None = None,
    commit_message: str = "Upload vilalign model",
    api: Any = None,
) -> str:
    """Save ``model`` as :func:`save_pretrained` does and upload the folder to the Hub repo
    ``repo_id`` (created when missing) in one commit; returns the commit's URL.

    ``api`` is the ``huggingface_hub.HfApi`` to use (default: one with ``token``, which
    defaults to the login of ``hf auth login``); anything with its ``create_repo`` and
    ``upload_folder`` will do, which is how the tests run without a network.
    """
    import tempfile

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", tokenizer, card)
        commit = api.upload_folder(
            repo_id=getattr(repo, "repo_id", repo_id),
            repo_type="model",
            folder_path=folder,
            commit_message=commit_message,
            revision=branch,
            create_pr=create_pr,
        )
    return str(getattr(commit, "commit_url", commit))

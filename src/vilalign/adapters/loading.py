"""Loading a published model as the ecosystem does: ``from_pretrained`` on a name or folder.

A hub name (``dandelin/vilt-b32-mlm``) is read from the Hugging Face cache, downloading it
first when the hub can be reached; with ``HF_HUB_OFFLINE=1`` nothing is downloaded and a
name not in the cache is a clear error. A folder is read as ``save_pretrained`` wrote it
(config, weights, and the processor or tokenizer files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from vilalign.adapters.base import (
    Adapter,
    AdapterError,
    ModelNotAvailableError,
    UnsupportedModelError,
    adapter_class,
)

T = TypeVar("T")


def _unavailable(name: str, err: Exception) -> ModelNotAvailableError:
    from huggingface_hub import is_offline_mode

    where = (
        "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set so nothing is "
        "downloaded (download it where the hub can be reached: hf download NAME)"
        if is_offline_mode()
        else "not found on the Hugging Face Hub"
    )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelNotAvailableError(f"{name!r} is not a saved model folder and {where}: {first}")


def _pretrained(load: Callable[..., T], name: str, **kwargs: Any) -> T:
    """``load(name)``, its failures turned into errors that name the model."""
    try:
        return load(name, **kwargs)
    except OSError as err:  # not a folder, not cached offline, not on the hub
        raise _unavailable(name, err) from err
    except (KeyError, ValueError) as err:  # a config transformers does not know
        if isinstance(err, AdapterError):
            raise
        raise UnsupportedModelError(f"{name!r}: transformers cannot read it: {err}") from err


def _check_folder(name: str) -> None:
    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"{name}: the folder has no config.json, so it is not a model saved with "
            "save_pretrained"
        )


def load_hf_model(
    name_or_path: str | Path,
    regions: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Adapter:
    """A published model by hub name or folder, in its adapter, in eval mode.

    ``regions``: the region-feature file LXMERT and VisualBERT read (see
    :class:`~vilalign.adapters.region.RegionFeatures`); other models take none.
    """
    import transformers
    from transformers import AutoConfig

    name = str(name_or_path)
    _check_folder(name)
    config = _pretrained(AutoConfig.from_pretrained, name)
    cls = adapter_class(config, name)
    if regions is not None and not cls.reads_regions:
        raise AdapterError(
            f"regions: {name} ({cls.model_class}) reads images, not a region-feature file"
        )
    model = _pretrained(getattr(transformers, cls.model_class).from_pretrained, name)
    processor = _pretrained(cls.load_processor, name)
    options = {"regions": regions} if cls.reads_regions else {}
    adapter = cls(model, processor, name=name, **options)
    return adapter.to(device) if device is not None else adapter

"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` as methods of the model, with
the names and arguments of huggingface_hub's ``ModelHubMixin``, over vilalign's checkpoint
format (:mod:`vilalign.model.checkpoint`).

Why not ``PyTorchModelHubMixin`` itself: it records the ``__init__`` arguments of every
model built (ours take encoder modules, which it cannot store), writes its own
``config.json`` and never rewrites an existing ``README.md``. The checkpoint format
already is the Hub's (``config.json`` + ``model.safetensors`` + a model card), so three
methods over it are shorter than adapting the mixin, and the functions
``save_pretrained(model, folder)`` / ``load_pretrained(folder)`` keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vilalign.model.card import CardInfo


class HubMixin:
    """The Hub round trip; the model class inherits it (vilalign.model.vilbert)."""

    def save_pretrained(
        self, save_directory: str | Path, *, tokenizer: Any = None, card: CardInfo | None = None
    ) -> Path:
        """Weights, config, model card (and ``tokenizer``) into ``save_directory``."""
        from vilalign.model.checkpoint import save_pretrained

        return save_pretrained(self, save_directory, tokenizer, card)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **hub: Any) -> Any:
        """The model in a local folder or a Hub repo (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download`` as in huggingface_hub), in eval mode."""
        from vilalign.model.checkpoint import from_pretrained

        return from_pretrained(pretrained_model_name_or_path, **hub)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload to the Hub repo ``repo_id`` (see vilalign.model.checkpoint.push_to_hub)."""
        from vilalign.model.checkpoint import push_to_hub

        return push_to_hub(self, repo_id, **options)  # type: ignore[arg-type]

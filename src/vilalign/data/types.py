"""The contracts every dataset and every consumer share: what a dataset declares about
itself (:class:`DatasetInfo`, :class:`TaskInfo`), what it yields (:class:`Sample`) and
what the model and the objectives consume (:class:`Batch`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

import torch

# How a supervised dataset's labels are scored; vilalign.train maps each kind to its loss
# and metrics (the data package knows no losses).
LossKind = Literal["multiclass", "binary", "multilabel", "soft"]
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)


@dataclass(frozen=True)
class TaskInfo:
    """A dataset's supervised task, as data.

    ``loss``: multiclass (class index), binary (0/1, one logit), multilabel (multi-hot)
    or soft (scores in [0, 1] per answer, VQA); ``monitor``: the validation metric whose
    best value picks the checkpoint (a name the loss kind's metrics report), higher
    better unless ``monitor_mode="min"``.
    """

    loss: LossKind
    monitor: str
    monitor_mode: Literal["min", "max"] = "max"

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss: unknown loss kind {self.loss!r} (allowed: {LOSS_KINDS})")
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode: {self.monitor_mode!r} is not 'min' or 'max'")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset says about itself, once, beside its reader (see ``register_dataset``).

    ``splits``: the split names as the community uses them, the training split first.
    ``split_aliases``: (other name, split) pairs: names an earlier release of the data used
    for a split (Hateful Memes' first release: ``dev`` for ``dev_seen``); ``build_dataset``
    accepts them and the reader decides which file to read.
    ``num_labels``: label classes (None: no labels, or known only from the data, as VQA's
    answer vocabulary). ``label_names``: what each label means, in label order (a binary
    task names its two classes, negative first); None: unnamed, or known only from the data
    (the dataset instance's ``label_names`` then says). ``task``: the supervised task
    (None: caption data, pretraining only). ``needs_root``: read from a folder given as
    ``data.root`` (easy-VQA ships in its package). ``several_captions``: several captions
    per image, one selectable with ``data.caption``. ``streaming``: an endless stream whose
    captions do not repeat (the collator then keeps no text cache).
    """

    name: str
    splits: tuple[str, ...]
    num_labels: int | None = None
    task: TaskInfo | None = None
    label_names: tuple[str, ...] | None = None
    split_aliases: tuple[tuple[str, str], ...] = ()
    needs_root: bool = True
    several_captions: bool = False
    streaming: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.splits:
            raise ValueError(f"dataset {self.name!r}: needs a name and at least one split")
        if self.num_labels is not None and self.num_labels < 1:
            raise ValueError(f"dataset {self.name!r}: num_labels must be >= 1 or None")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.label_names)} label_names for "
                f"num_labels={self.num_labels}"
            )
        unknown = [split for _, split in self.split_aliases if split not in self.splits]
        if unknown:
            raise ValueError(f"dataset {self.name!r}: split_aliases name unknown splits {unknown}")

    @property
    def train_split(self) -> str:
        return self.splits[0]

    @property
    def aliases(self) -> dict[str, str]:
        """``{other name: split}`` (see ``split_aliases``)."""
        return dict(self.split_aliases)


@dataclass
class Sample:
    """What a dataset yields.

    ``image`` is a float tensor C×H×W already normalised for the image encoder; ``label``
    is task-specific (class index, multi-hot vector, soft VQA targets, or None for
    caption data); ``id`` is unique within the dataset and stable across runs.

    ``image_id`` names the image the sample shows, set by its reader: samples with the
    same ``image_id`` show the same image (the five captions of a COCO image, the
    questions about one easy-VQA image). Alignment-prediction negatives, retrieval and
    caption averaging read it; nothing parses ``id`` for it. Left out (None), the sample
    is the only one showing its image and ``id`` stands for it.
    """

    image: torch.Tensor
    text: str
    label: torch.Tensor | None
    id: str
    image_id: str | None = None

    def __post_init__(self) -> None:
        if self.image_id is None:
            self.image_id = self.id


@dataclass
class Batch:
    """What the model and the objectives consume. ``to(device)`` moves every tensor."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    token_type_ids: torch.Tensor  # (B, T) long
    pixel_values: torch.Tensor  # (B, C, H, W) float
    labels: torch.Tensor | None = None
    ids: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)  # per row: Sample.image_id (default: ids)
    # Pretraining extras, filled by the pretraining collator.
    mlm_labels: torch.Tensor | None = None  # (B, T) long, -100 where not predicted
    mim_mask: torch.Tensor | None = None  # (B, P) bool, True = patch masked
    ap_labels: torch.Tensor | None = None  # (B,) long, 1 = caption belongs to image
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.image_ids:  # rows of a hand-made batch each show their own image
            self.image_ids = list(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor (also inside ``extras``) on ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=non_blocking)
            return value

        moved = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        moved["extras"] = {k: move(v) for k, v in self.extras.items()}
        return replace(self, **moved)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

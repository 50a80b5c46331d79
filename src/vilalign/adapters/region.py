"""LXMERT (``LxmertModel``) and VisualBERT (``VisualBertModel``): models over detector regions.

Both read an image as the features and boxes of regions that an object detector (the
bottom-up-attention Faster R-CNN) found in it. **vilalign does not run a detector**: you
supply the regions, computed once, in a file (:class:`RegionFeatures`, format below), and
each sample's regions are looked up by its image id (when the sample has one) or its id.

Region-feature file: a ``.npz`` file, or a folder of ``.npy`` files with the same names
(memory-mapped, for sets too large to hold in memory), holding

=============  ============  ===========================================================
``ids``        (N,) str      the sample or image ids, one row each, unique
``features``   (N, R, D)     region features (D = 2048 for the usual detector)
``boxes``      (N, R, 4)     (x1, y1, x2, y2) divided by the image's width and height
``num_boxes``  (N,) int      optional: real regions in each row (padding after them);
                             default: all R
=============  ============  ===========================================================

LXMERT: language layers ``text_encoder.i``, relational (region) layers
``image_encoder.j``, cross-modality layers ``fusion.k`` (co-attention: one cross-attention
module serves both directions, then a self-attention per stream). VisualBERT: one BERT over
text tokens then regions, ``fusion.k`` of kind ``single_stream``; it reads the features
only (no boxes). Regions have no summary token, so neither model has a ``cls`` view.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vilalign.adapters.base import (
    SINGLE_STREAM,
    Adapter,
    AdapterError,
    AttentionMaps,
    CrossModalLayers,
    States,
    UnsupportedModelError,
    captured_weights,
    eager_attention,
    register_adapter,
    stacked_layers,
)
from vilalign.adapters.data import NoImage, kept_samples, to_batch
from vilalign.analysis.collect import LayerInfo, StreamMasks
from vilalign.data.types import Batch, Sample

REQUIRED = ("ids", "features", "boxes")
BOX_SLACK = 1e-3  # boxes a detector rounds to just outside the image still count as inside


class RegionFeatureError(AdapterError):
    """A region-feature file is malformed; the message names the file and the field."""


class MissingRegionsError(RegionFeatureError):
    """Samples whose ids the region-feature file does not hold."""


def _open_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        return {
            f.stem: np.load(f, mmap_mode="r", allow_pickle=False)
            for f in sorted(path.glob("*.npy"))
        }
    if not path.is_file():
        raise FileNotFoundError(f"region features: {path} does not exist")
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


class RegionFeatures:
    """Precomputed detector regions per id, read from a file the user supplies."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            arrays = _open_arrays(self.path)
        except ValueError as err:  # object arrays (pickles) are refused
            raise RegionFeatureError(
                f"{self.path}: {err} (save ids as np.array(ids, dtype=str))"
            ) from None
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise RegionFeatureError(f"{self.path}: no {', '.join(missing)} array (see docs)")
        self.features, self.boxes = arrays["features"], arrays["boxes"]
        ids = [str(i) for i in arrays["ids"]]
        n, regions = len(ids), self.features.shape[1] if self.features.ndim == 3 else 0
        self.num_boxes = np.asarray(arrays.get("num_boxes", np.full(n, regions)))
        self._check_shapes(n)
        self.index = {key: row for row, key in enumerate(ids)}
        if len(self.index) != n:
            dup = next(k for k in ids if ids.count(k) > 1)
            raise RegionFeatureError(f"{self.path}: id {dup!r} appears more than once")
        self.ids = ids

    def _check_shapes(self, n: int) -> None:
        f, b, m = self.features, self.boxes, self.num_boxes
        if f.ndim != 3 or f.shape[0] != n:
            raise RegionFeatureError(f"{self.path}: features must be (N={n}, R, D), got {f.shape}")
        if b.shape != (*f.shape[:2], 4):
            raise RegionFeatureError(
                f"{self.path}: boxes must be {(*f.shape[:2], 4)}, got {b.shape}"
            )
        if m.shape != (n,) or (m < 1).any() or (m > f.shape[1]).any():
            raise RegionFeatureError(
                f"{self.path}: num_boxes must be N={n} counts in 1..{f.shape[1]}"
            )

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def row(self, sample: Sample) -> int:
        for key in sample_keys(sample):
            if key in self.index:
                return self.index[key]
        raise KeyError(sample.id)

    def lookup(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """Features (B, R, D), boxes (B, R, 4) and mask (B, R) of ``samples``, padded to the
        most regions among them."""
        rows, missing = [], []
        for s in samples:
            try:
                rows.append(self.row(s))
            except KeyError:
                missing.append(" / ".join(sample_keys(s)))
        if missing:
            raise MissingRegionsError(
                f"{self.path}: no regions for id {missing[0]!r}"
                + (f" (and {len(missing) - 1} more in this batch)" if len(missing) > 1 else "")
                + f"; the file holds {len(self.ids)} ids, e.g. {self.ids[:3]}"
            )
        counts = self.num_boxes[rows]
        r = int(counts.max())
        boxes = np.stack([self.boxes[i, :r] for i in rows]).astype(np.float32)
        self._check_boxes(boxes, counts, rows)
        mask = torch.arange(r)[None] < torch.as_tensor(counts)[:, None]
        features = np.stack([self.features[i, :r] for i in rows]).astype(np.float32)
        return {
            "region_features": torch.from_numpy(features),
            "region_boxes": torch.from_numpy(boxes),
            "region_mask": mask.long(),
        }

    def _check_boxes(self, boxes: np.ndarray, counts: np.ndarray, rows: list[int]) -> None:
        for box, n, row in zip(boxes, counts, rows, strict=True):
            real = box[:n]
            if (real < -BOX_SLACK).any() or (real > 1 + BOX_SLACK).any():
                raise RegionFeatureError(
                    f"{self.path}: boxes of id {self.ids[row]!r} are not normalised to [0, 1] "
                    "(divide x by the image width and y by its height)"
                )


def sample_keys(sample: Sample) -> list[str]:
    """The ids a sample's regions may be filed under: its image's id, then its own."""
    image_id = getattr(sample, "image_id", None)
    keys = [str(image_id)] if image_id is not None else []
    return [*keys, str(sample.id)] if str(sample.id) not in keys else keys


class RegionCollator:
    """``list[Sample]`` → :class:`Batch`: texts through the tokenizer, images as regions."""

    def __init__(self, tokenizer: Any, regions: RegionFeatures, max_length: int, padding: str):
        self.tokenizer, self.regions = tokenizer, regions
        self.max_length, self.padding = max_length, padding

    def __call__(self, samples: Sequence[Sample | None]) -> Batch:
        kept = kept_samples(samples)
        encoded = self.tokenizer(
            [s.text for s in kept],
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        return to_batch({**encoded, **self.regions.lookup(kept)}, kept)


class RegionAdapter(Adapter):
    """What LXMERT and VisualBERT share: a tokenizer, and regions from a file."""

    processor_classes = ()  # a bare tokenizer: the "image processor" is the region file
    reads_regions = True
    num_prefix_tokens = 0
    no_summary: ClassVar[dict[str, str]] = {"image": "regions have no summary token"}

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str | None = None,
        regions: RegionFeatures | str | Path | None = None,
    ) -> None:
        super().__init__(model, processor, name)
        if regions is not None and not isinstance(regions, RegionFeatures):
            regions = RegionFeatures(regions)
        self.regions = regions
        if regions is not None and regions.dim != self.region_dim:
            raise RegionFeatureError(
                f"{regions.path}: features have {regions.dim} dimensions but "
                f"{self.describe()} reads {self.region_dim}"
            )

    @classmethod
    def load_processor(cls, name: str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)

    @property
    @abstractmethod
    def region_dim(self) -> int:
        """The feature width the model reads."""

    def options(self) -> dict[str, Any]:
        return {"regions": self.regions}

    def image_transform(self) -> NoImage:
        return NoImage()

    def collator(self, max_length: int, padding: str = "longest") -> RegionCollator:
        if self.regions is None:
            raise AdapterError(
                f"{self.describe()} reads precomputed region features: give a region-feature "
                "file (--regions FILE; vilalign does not run a detector, see docs/adapters.md)"
            )
        return RegionCollator(self.tokenizer, self.regions, max_length, padding)

    def check_images(self, batch: Batch) -> None:
        if "region_features" not in batch.extras:
            raise AdapterError(
                f"{self.describe()}: the batch has no region features; build batches with "
                "the adapter's collator (adapter.collator or adapter.encode)"
            )
        got = batch.extras["region_features"].shape[-1]
        if got != self.region_dim:
            raise RegionFeatureError(
                f"{self.describe()} reads {self.region_dim}-dimensional region features, got {got}"
            )

    def text_inputs(self, batch: Batch) -> dict[str, Any]:
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }


@register_adapter
class LxmertAdapter(CrossModalLayers, RegionAdapter):
    model_types = ("lxmert",)
    model_class = "LxmertModel"
    family = "two streams over detector regions: language, relational, cross-modality layers"

    @property
    def region_dim(self) -> int:
        return int(self.model.config.visual_feat_dim)

    def _depths(self) -> tuple[int, int, int]:
        c = self.model.config
        return int(c.l_layers), int(c.r_layers), int(c.x_layers)

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        return {
            **self.text_inputs(batch),
            "visual_feats": batch.extras["region_features"],
            "visual_pos": batch.extras["region_boxes"],
            "visual_attention_mask": batch.extras["region_mask"],
        }

    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        out = self(batch, output_hidden_states=True)
        text, image, _ = self._depths()
        lang, vis = out.language_hidden_states, out.vision_hidden_states  # no embeddings
        states: States = {}
        for i in range(text):
            states[(f"text_encoder.{i}", "text")] = lang[i]
        for j in range(image):
            states[(f"image_encoder.{j}", "image")] = vis[j]
        for k, (t, v) in enumerate(zip(lang[text:], vis[image:], strict=True)):
            states[(f"fusion.{k}", "text")], states[(f"fusion.{k}", "image")] = t, v
        return states, StreamMasks(batch.attention_mask, batch.extras["region_mask"])

    def attention_maps(self, batch: Batch) -> AttentionMaps:
        layers = self.model.encoder.x_layers
        # LXMERT returns one cross direction only and no cross-layer self-attention;
        # asking each attention module itself for its weights gets all four. The shared
        # cross-attention module runs twice per layer: text queries first, then image.
        modules = [x.visual_attention.att for x in layers]
        modules += [x.lang_self_att.self for x in layers] + [x.visn_self_att.self for x in layers]
        with eager_attention(self.model), captured_weights(modules, "output_attentions") as calls:
            self(batch)
        n = len(layers)
        maps = [
            {
                "text_to_image": calls[k][0],
                "image_to_text": calls[k][1],
                "text_self": calls[n + k][0],
                "image_self": calls[2 * n + k][0],
            }
            for k in range(n)
        ]
        return AttentionMaps(maps, [True] * n, batch.attention_mask, batch.extras["region_mask"])


@register_adapter
class VisualBertAdapter(RegionAdapter):
    model_types = ("visual_bert",)
    model_class = "VisualBertModel"
    family = "single stream over text tokens and detector regions"

    def __init__(self, model: Any, processor: Any, name: str | None = None, **options: Any):
        if getattr(model.config, "bypass_transformer", False):
            raise UnsupportedModelError(
                f"{name or type(model).__name__}: VisualBERT with bypass_transformer=True "
                "(text-only layers, then one joint layer) is not supported"
            )
        super().__init__(model, processor, name, **options)

    @property
    def region_dim(self) -> int:
        return int(self.model.config.visual_embedding_dim)

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        return stacked_layers(len(self.model.encoder.layer), SINGLE_STREAM)

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        return {
            **self.text_inputs(batch),
            "visual_embeds": batch.extras["region_features"],
            "visual_attention_mask": batch.extras["region_mask"],
        }

    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        out = self(batch, output_hidden_states=True)
        T = batch.input_ids.shape[1]
        states: States = {}
        for k, h in enumerate(out.hidden_states[1:]):  # [0] is the embedding output
            states[(f"fusion.{k}", "text")], states[(f"fusion.{k}", "image")] = h[:, :T], h[:, T:]
        return states, StreamMasks(batch.attention_mask, batch.extras["region_mask"])

    def attention_maps(self, batch: Batch) -> AttentionMaps:
        with eager_attention(self.model):
            out = self(batch, output_attentions=True)
        layers = [{"joint": w} for w in out.attentions]  # (B, H, T + R, T + R)
        return AttentionMaps(
            layers, [False] * len(layers), batch.attention_mask, batch.extras["region_mask"]
        )

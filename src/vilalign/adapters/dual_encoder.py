"""CLIP (``CLIPModel``) and SigLIP (``SiglipModel``): two towers that never meet.

Nothing fuses the streams, so the question is the platonic-representation one: how alike
are the text tower's and the image tower's representations, layer by layer? The layers
are the towers' own (kind ``encoder``); the alignment table reads them in depth-paired
layers ``encoder.k`` (text layer and image layer at the same relative depth,
:func:`~vilalign.adapters.base.depth_pairs`), and the layer × layer matrix compares every
text layer with every image layer. With towers of equal depth every layer is paired;
otherwise the deeper tower's remaining layers come as ``text_encoder.i`` /
``image_encoder.j`` (with ``include_encoders``) so the matrix still sees all of them.

States are the towers' hidden states as the model returns them (before CLIP's final
layer norms and projections). The text summary token (``cls`` view) is the one each model
pools: CLIP's end-of-text token, SigLIP's last position. SigLIP's vision tower has no
summary token (it pools with an attention head), so it has no ``cls`` view.

Attention: CLIP's text tower is causal; normalised entropy still divides by the log of
all real keys, so its text heads look more focused than a bidirectional head would.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from vilalign.adapters.base import (
    ENCODER,
    STREAMS,
    Adapter,
    AttentionMaps,
    States,
    depth_pairs,
    eager_attention,
    register_adapter,
)
from vilalign.adapters.data import ProcessorCollator
from vilalign.analysis.collect import LayerInfo, StreamMasks
from vilalign.data.types import Batch


class DualEncoderAdapter(Adapter):
    """What CLIP and SigLIP share: two towers, paired by depth."""

    family = "two towers that never meet"
    num_prefix_tokens = 1
    #: whether the text tower is given the attention mask (SigLIP was trained without)
    masks_text: ClassVar[bool] = True

    def expected_image_size(self) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]

    def _depths(self) -> tuple[int, int]:
        return (
            int(self.model.config.text_config.num_hidden_layers),
            int(self.model.config.vision_config.num_hidden_layers),
        )

    def _plan(
        self, include_encoders: bool
    ) -> list[tuple[float, LayerInfo, int | None, int | None]]:
        """(relative depth, layer, text index, image index), deepest last."""
        n_text, n_image = self._depths()
        pairs = depth_pairs(n_text, n_image)
        plan = [
            ((a + 1) / n_text, LayerInfo(f"encoder.{k}", k, ENCODER, STREAMS), a, b)
            for k, (a, b) in enumerate(pairs)
        ]
        if include_encoders:
            paired_text, paired_image = {a for a, _ in pairs}, {b for _, b in pairs}
            for i in sorted(set(range(n_text)) - paired_text):
                plan.append(
                    (
                        (i + 1) / n_text,
                        LayerInfo(f"text_encoder.{i}", i, ENCODER, ("text",)),
                        i,
                        None,
                    )
                )
            for j in sorted(set(range(n_image)) - paired_image):
                plan.append(
                    (
                        (j + 1) / n_image,
                        LayerInfo(f"image_encoder.{j}", j, ENCODER, ("image",)),
                        None,
                        j,
                    )
                )
        return sorted(plan, key=lambda p: (p[0], p[1].name))

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        return [info for _, info, _, _ in self._plan(include_encoders)]

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        inputs = {"input_ids": batch.input_ids, "pixel_values": batch.pixel_values}
        if self.masks_text:
            inputs["attention_mask"] = batch.attention_mask
        return inputs

    @abstractmethod
    def text_summary(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) position of the token the text tower pools."""

    def key_mask(self, batch: Batch) -> torch.Tensor:
        """(B, T) text positions the text tower attends to."""
        return batch.attention_mask if self.masks_text else torch.ones_like(batch.attention_mask)

    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        out = self(batch, output_hidden_states=True)
        text = out.text_model_output.hidden_states[1:]  # [0] is the embedding output
        image = out.vision_model_output.hidden_states[1:]
        states: States = {}
        for _, info, a, b in self._plan(include_encoders=True):
            if a is not None:
                states[(info.name, "text")] = text[a]
            if b is not None:
                states[(info.name, "image")] = image[b]
        summary = {"text": self.text_summary(batch.input_ids)}
        return states, StreamMasks(batch.attention_mask, summary=summary)

    def attention_maps(self, batch: Batch) -> AttentionMaps:
        with eager_attention(self.model):
            out = self(batch, output_attentions=True)
        text, image = out.text_model_output.attentions, out.vision_model_output.attentions
        pairs = depth_pairs(*self._depths())
        layers = [{"text_self": text[a], "image_self": image[b]} for a, b in pairs]
        return AttentionMaps(layers, [False] * len(layers), self.key_mask(batch))


@register_adapter
class ClipAdapter(DualEncoderAdapter):
    model_types = ("clip",)
    model_class = "CLIPModel"
    processor_classes = ("CLIPProcessor",)

    def text_summary(self, input_ids: torch.Tensor) -> torch.Tensor:
        # As CLIPTextTransformer pools: the first end-of-text token (configs from before
        # transformers PR #24773 say eos_token_id = 2 and mean the largest id).
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:
            return input_ids.argmax(dim=-1)
        return (input_ids == eos).int().argmax(dim=-1)


@register_adapter
class SiglipAdapter(DualEncoderAdapter):
    model_types = ("siglip",)
    model_class = "SiglipModel"
    processor_classes = ("SiglipProcessor",)
    no_summary: ClassVar[dict[str, str]] = {
        "image": "SigLIP's vision tower pools its patches with an attention head"
    }
    num_prefix_tokens = 0
    # SigLIP was trained on texts padded to a fixed length with no attention mask: the
    # padding is part of what it sees (its pooled token is the last pad).
    masks_text = False

    @property
    def max_text_length(self) -> int:
        return int(self.text_config.max_position_embeddings)

    def collator(self, max_length: int, padding: str = "longest") -> ProcessorCollator:
        # Always padded to the length it was trained on; the mask it returns marks the real
        # tokens for the mean view, and is not given to the model.
        return ProcessorCollator(
            self.processor, self.max_text_length, "max_length", {"return_attention_mask": True}
        )

    def text_summary(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, device=input_ids.device)

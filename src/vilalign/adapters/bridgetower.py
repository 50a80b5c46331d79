"""BridgeTower (``BridgeTowerModel``): the closest published relative of vilalign's model.

A RoBERTa text encoder and a CLIP ViT image encoder; the top layers of each feed, through
"bridge" layers, a stack of cross-modal layers with one stream per modality. Each
cross-modal layer holds a self-attention and a cross-attention sublayer per stream, so it
is a co-attention layer in vilalign's terms with all four directions (text self, image
self, text→image, image→text).

Layers: ``text_encoder.i`` (every RoBERTa layer), ``image_encoder.j`` (every ViT block,
before the model's ``ln_post``), ``fusion.k`` (the cross-modal layers' outputs). The image
stream starts with the ViT's CLS token (one prefix token).
"""

from __future__ import annotations

from typing import Any

from vilalign.adapters.base import (
    Adapter,
    AttentionMaps,
    CrossModalLayers,
    States,
    captured_weights,
    eager_attention,
    register_adapter,
)
from vilalign.analysis.collect import StreamMasks
from vilalign.data.types import Batch


@register_adapter
class BridgeTowerAdapter(CrossModalLayers, Adapter):
    model_types = ("bridgetower",)
    model_class = "BridgeTowerModel"
    processor_classes = ("BridgeTowerProcessor",)
    family = "two streams (RoBERTa, CLIP ViT) bridged into co-attention layers"
    num_prefix_tokens = 1

    def expected_image_size(self) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]

    @property
    def max_text_length(self) -> int:
        # RoBERTa's positions start after the padding index: two fewer usable positions.
        c = self.text_config
        return min(
            int(c.max_position_embeddings) - int(c.pad_token_id) - 1, super().max_text_length
        )

    def _depths(self) -> tuple[int, int, int]:
        m = self.model
        text = len(m.text_model.encoder.layer)
        image = len(m.vision_model.visual.transformer.resblocks)
        return text, image, len(m.cross_modal_text_layers)

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "pixel_values": batch.pixel_values,
        }
        if "pixel_mask" in batch.extras:
            inputs["pixel_mask"] = batch.extras["pixel_mask"]
        return inputs

    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        # BridgeTowerModel always returns its hidden states: (text, image, cross pairs).
        text, image, cross = self(batch).hidden_states
        states: States = {}
        for i, h in enumerate(text[1:]):  # [0] is the embedding output
            states[(f"text_encoder.{i}", "text")] = h
        for i, h in enumerate(image[1:]):
            states[(f"image_encoder.{i}", "image")] = h.permute(1, 0, 2)  # (L, B, D) -> (B, L, D)
        for k, (t, v) in enumerate(cross):
            states[(f"fusion.{k}", "text")], states[(f"fusion.{k}", "image")] = t, v
        return states, StreamMasks(batch.attention_mask)

    def attention_maps(self, batch: Batch) -> AttentionMaps:
        m = self.model
        # The model returns the self-attention weights; the cross-attention ones are kept
        # by hooks on each layer's cross-attention module (it returns them with eager).
        modules = [layer.crossattention.self for layer in m.cross_modal_text_layers]
        modules += [layer.crossattention.self for layer in m.cross_modal_image_layers]
        with eager_attention(m), captured_weights(modules) as calls:
            out = self(batch, output_attentions=True)
        n = len(m.cross_modal_text_layers)
        layers = [
            {
                "text_self": text_self,
                "image_self": image_self,
                "text_to_image": calls[k][0],
                "image_to_text": calls[n + k][0],
            }
            for k, (text_self, image_self) in enumerate(out.attentions)
        ]
        return AttentionMaps(layers, [True] * n, batch.attention_mask)

"""ViLT (``ViltModel``): one transformer over text tokens and image patches.

As in vilalign's ``single_stream`` baseline, the text positions and the image positions
of each layer's output are the two streams: ``fusion.k`` (kind ``single_stream``) holds
layer k's text part and image part (the image part starts with ViLT's image CLS token).
ViLT has no separate encoders, so ``include_encoders`` adds nothing.

Two things ViLT does that the adapter keeps visible:

- Its processor pads images of different sizes in a batch to the largest, and the model
  marks the padded patches in its own mask; the adapter reads that mask (a hook on the
  embeddings, which return it) so means skip padded patches.
- It draws the order of patches (and, with ``max_image_length``, a subset) at random in
  every forward pass. The adapter runs each batch under a fixed seed, so collection
  repeats exactly; patch order is ViLT's drawn order, not row-major (the pooled views and
  the token measures do not depend on it).
"""

from __future__ import annotations

from typing import Any

import torch

from vilalign.adapters.base import (
    SINGLE_STREAM,
    Adapter,
    AttentionMaps,
    States,
    eager_attention,
    register_adapter,
    stacked_layers,
)
from vilalign.analysis.collect import LayerInfo, StreamMasks
from vilalign.data.types import Batch

#: The seed each batch's patch draw runs under (ViLT samples patches in every forward).
PATCH_SEED = 0


@register_adapter
class ViltAdapter(Adapter):
    model_types = ("vilt",)
    model_class = "ViltModel"
    processor_classes = ("ViltProcessor",)
    family = "single stream over text tokens and image patches"
    num_prefix_tokens = 1

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        return stacked_layers(len(self.model.encoder.layer), SINGLE_STREAM)

    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
            "pixel_values": batch.pixel_values,
            "pixel_mask": batch.extras.get("pixel_mask"),
        }

    def _run(self, batch: Batch, **kwargs: Any) -> tuple[Any, torch.Tensor]:
        """The model's output and the (B, I) mask of real image tokens it used."""
        masks: list[torch.Tensor] = []
        # ViltEmbeddings returns (embeddings, mask over text then image tokens).
        hook = self.model.embeddings.register_forward_hook(lambda _m, _i, out: masks.append(out[1]))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PATCH_SEED)  # the patch draw happens on the CPU generator
                out = self(batch, **kwargs)
        finally:
            hook.remove()
        return out, masks[0][:, batch.input_ids.shape[1] :]

    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        out, image_mask = self._run(batch, output_hidden_states=True)
        T = batch.input_ids.shape[1]
        states: States = {}
        for k, h in enumerate(out.hidden_states[1:]):  # [0] is the embedding output
            states[(f"fusion.{k}", "text")] = h[:, :T]
            states[(f"fusion.{k}", "image")] = h[:, T:]
        return states, StreamMasks(batch.attention_mask, image_mask)

    def attention_maps(self, batch: Batch) -> AttentionMaps:
        with eager_attention(self.model):
            out, image_mask = self._run(batch, output_attentions=True)
        layers = [{"joint": w} for w in out.attentions]  # (B, H, T + I, T + I) each
        return AttentionMaps(layers, [False] * len(layers), batch.attention_mask, image_mask)

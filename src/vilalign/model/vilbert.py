"""The two-stream model: text and image encoders, fusion layers, pooled and fused vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from vilalign.config import COATTENTION, ModelConfig
from vilalign.model.encoders import (
    ImageEncoder,
    build_image_encoder,
    build_text_encoder,
    freeze_layers,
    image_data_config,
)
from vilalign.model.fusion import IMAGE, TEXT, Attentions, fusion_layer_type
from vilalign.model.heads import ClassificationHead, Pooler, fuse, fused_size
from vilalign.model.hub import HubMixin


@dataclass
class VilbertOutput:
    """Everything one forward pass produces.

    ``text_states[i]`` (B×T×Dt) and ``image_states[i]`` (B×(prefix+P)×Dv, index 0 the
    image CLS token) are the outputs of fusion layer ``i``; ``layer_kinds[i]`` is its kind
    (``FusionLayer.kind``: 'coattention', 'self_attention', 'single_stream', ...) and
    ``is_coattention[i]`` whether that is 'coattention'. ``attentions[i]`` holds the layer's
    weights under its ``directions``. ``text_sequence``/``image_sequence`` are the final
    states (the encoders' outputs when there are no fusion layers). Encoder states
    (embeddings first, then every layer) and attention maps only when asked.
    """

    text_states: list[torch.Tensor]
    image_states: list[torch.Tensor]
    is_coattention: list[bool]
    layer_kinds: list[str]
    text_sequence: torch.Tensor
    image_sequence: torch.Tensor
    pooled_text: torch.Tensor
    pooled_image: torch.Tensor
    fused: torch.Tensor
    logits: torch.Tensor | None
    attention_mask: torch.Tensor
    encoder_text_states: list[torch.Tensor] | None = None
    encoder_image_states: list[torch.Tensor] | None = None
    attentions: list[Attentions] | None = None


class VilbertModel(HubMixin, nn.Module):
    """ViLBERT-style two-stream transformer on a BERT and a ViT.

    Build it with :func:`build_model`; the constructor takes ready encoders so that
    loading weights stays outside the class.
    """

    def __init__(
        self, config: ModelConfig, text_encoder: BertModel, image_encoder: ImageEncoder
    ) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        text_dim = text_encoder.config.hidden_size
        image_dim = image_encoder.embed_dim
        if config.variant == "single_stream":
            # One shared sequence: patches projected to the text width, plus a learned
            # modality-type embedding (ViLT's token_type_embeddings).
            self.image_projection = (
                nn.Linear(image_dim, text_dim) if image_dim != text_dim else nn.Identity()
            )
            self.modality_embeddings = nn.Embedding(2, text_dim)
            image_dim = text_dim
        #: Widths of the two streams the fusion layers (and the objectives) see.
        self.stream_widths = {TEXT: text_dim, IMAGE: image_dim}
        for name, dim in self.stream_widths.items():
            if config.layer_kinds and dim % config.num_heads:
                raise ValueError(
                    f"num_heads: {config.num_heads} does not divide the {name} stream width {dim}"
                )
        self.fusion_layers = nn.ModuleList(
            [
                fusion_layer_type(kind).from_config(config, text_dim, image_dim)
                for kind in config.layer_kinds
            ]
        )
        self.text_pooler = Pooler(text_dim, config.pooled_size, config.pooling)
        self.image_pooler = Pooler(image_dim, config.pooled_size, config.pooling)
        self.head = (
            ClassificationHead(self.fused_size, config.num_labels, config.head_dropout)
            if config.num_labels
            else None
        )
        self._freeze_ignored_stream()

    @property
    def fusion_mode(self) -> str:
        """How the pooled vectors combine: the config's ``fusion``, or the one stream a
        unimodal baseline reads ('text' / 'image')."""
        return {"text_only": TEXT, "image_only": IMAGE}.get(self.config.variant, self.config.fusion)

    @property
    def fused_size(self) -> int:
        """Width of the fused vector: what the task head and every pretraining head read."""
        return fused_size(self.config.pooled_size, self.fusion_mode)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The streams that reach the fused vector (a unimodal baseline ignores the other)."""
        mode = self.fusion_mode
        return (mode,) if mode in (TEXT, IMAGE) else (TEXT, IMAGE)

    def _freeze_ignored_stream(self) -> None:
        """Unimodal baselines: the other stream's encoder and pooler take no gradient."""
        ignored = {
            "text_only": (self.image_encoder, self.image_pooler),
            "image_only": (self.text_encoder, self.text_pooler),
        }.get(self.config.variant, ())
        for module in ignored:
            freeze_layers(module, [], 0)

    def _single_stream_inputs(
        self, text: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project patches to the text width and add the modality-type embeddings."""
        image = self.image_projection(image)  # (B, prefix + P, Dt)
        kinds = self.modality_embeddings.weight  # (2, Dt): 0 = text, 1 = image
        return text + kinds[0], image + kinds[1]

    # ------------------------------------------------------------------ declarations

    @property
    def text_word_embeddings(self) -> nn.Embedding:
        return self.text_encoder.embeddings.word_embeddings

    @property
    def num_patches(self) -> int:
        return self.image_encoder.num_patches

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of image patches; patch states are in row-major order."""
        rows, cols = self.image_encoder.vit.patch_embed.grid_size
        return int(rows), int(cols)

    @property
    def num_prefix_tokens(self) -> int:
        return self.image_encoder.num_prefix_tokens

    @property
    def image_data_config(self) -> dict[str, Any]:
        """timm preprocessing (input_size, mean, std, interpolation, crop_pct) for the ViT."""
        return image_data_config(self.image_encoder.vit, self.config.image.img_size)

    def no_weight_decay_names(self) -> set[str]:
        """Parameters that skip weight decay: biases and normalisation weights (as ViLBERT)."""
        names = {name for name, _ in self.named_parameters() if name.endswith("bias")}
        for module_name, module in self.named_modules():
            if "Norm" in type(module).__name__:  # LayerNorm, RMSNorm, GroupNorm, BatchNorm*d
                names |= {f"{module_name}.{n}" for n, _ in module.named_parameters()}
        return names

    def encoder_parameter_names(self) -> set[str]:
        """Parameters of *pretrained* encoders (trained at a lower learning rate)."""
        names: set[str] = set()
        text, image = self.config.text, self.config.image
        if text.name_or_path is not None and text.init == "pretrained":
            names |= {f"text_encoder.{n}" for n, _ in self.text_encoder.named_parameters()}
        if image.pretrained or image.weights_file is not None:
            names |= {
                f"image_encoder.vit.{n}" for n, _ in self.image_encoder.vit.named_parameters()
            }
        return names

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> VilbertOutput:
        """Run both streams and the fusion layers.

        ``attention_mask`` (B, T) marks real tokens; ``image_mask`` (B, P) marks patches
        to replace by the mask token. Asking for hidden states or attentions never
        changes any output: the same layers run, the explicit-attention path computes
        the same function as the fused one.
        """
        text_out = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
        )
        text = text_out.last_hidden_state  # (B, T, Dt)
        image, image_hidden = self.image_encoder(pixel_values, image_mask, output_hidden_states)
        if self.config.variant == "single_stream":
            text, image = self._single_stream_inputs(text, image)
        text_states: list[torch.Tensor] = []
        image_states: list[torch.Tensor] = []
        attentions: list[Attentions] = []
        for layer in self.fusion_layers:
            text, image, attn = layer(text, image, attention_mask, output_attentions)
            text_states.append(text)
            image_states.append(image)
            if attn is not None:
                attentions.append(attn)
        pooled_text = self.text_pooler(text, attention_mask)
        pooled_image = self.image_pooler(image)
        fused = fuse(pooled_text, pooled_image, self.fusion_mode)
        return VilbertOutput(
            text_states=text_states,
            image_states=image_states,
            is_coattention=[layer.kind == COATTENTION for layer in self.fusion_layers],
            layer_kinds=[layer.kind for layer in self.fusion_layers],
            text_sequence=text,
            image_sequence=image,
            pooled_text=pooled_text,
            pooled_image=pooled_image,
            fused=fused,
            logits=self.head(fused) if self.head is not None else None,
            attention_mask=attention_mask,
            encoder_text_states=list(text_out.hidden_states) if output_hidden_states else None,
            encoder_image_states=image_hidden,
            attentions=attentions if output_attentions else None,
        )


def build_model(
    config: ModelConfig, load_weights: bool = True, text_config: BertConfig | None = None
) -> VilbertModel:
    """Build the model from a config, loading pretrained encoder weights where configured.

    ``load_weights=False`` (with the stored ``text_config``) builds the architecture only,
    for loading a checkpoint without touching the hub.
    """
    text_encoder = build_text_encoder(config.text, load_weights, text_config)
    image_encoder = build_image_encoder(config.image, load_weights)
    return VilbertModel(config, text_encoder, image_encoder)

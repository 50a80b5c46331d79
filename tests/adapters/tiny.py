"""Tiny random models of every supported class, saved with their processors to a folder.

Nothing is downloaded: configs are a few dozen units wide, tokenizers are built here
(WordPiece from a word list, byte-level BPE without merges for RoBERTa and CLIP, a
SentencePiece unigram model trained on a few sentences for SigLIP), and everything goes
through ``save_pretrained`` so the tests load it back as a user's hub name would be.
"""

from __future__ import annotations

import io
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers as T

_WORDS = "a the is there in what color shape of image red green blue circle rectangle triangle"
WORDS = [*_WORDS.split(), "yes", "no", "not", "big", "small"]
TEXTS = [
    "what color is the circle?",
    "is there a red triangle in the image?",
    "a blue shape",
    "no",
    "is there not a big green rectangle?",
    "the small shape is red",
]
IMAGE = 32  # pixels: the towers' image_size; ViLT takes any size
PATCH = 8
REGION_DIM = 16
REGIONS = 5


def bert_tokenizer() -> T.PreTrainedTokenizerBase:
    letters = list(string.ascii_lowercase)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"?.,!", *letters]
    vocab += ["##" + c for c in letters]
    return T.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})


def _byte_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def roberta_tokenizer() -> T.PreTrainedTokenizerBase:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *_byte_alphabet()]
    return T.RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def clip_tokenizer() -> T.PreTrainedTokenizerBase:
    chars = _byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    return T.CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def siglip_tokenizer(folder: Path) -> T.PreTrainedTokenizerBase:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{a} {b} is there a shape?" for a in WORDS for b in WORDS),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    path = folder / "spiece.model"
    path.write_bytes(model.getvalue())
    return T.SiglipTokenizer(vocab_file=str(path))


@dataclass(frozen=True)
class Size:
    """How large the random models are: tiny for tests, larger for the benchmark."""

    hidden: int = 32
    heads: int = 2
    layers: int = 2  # fusion (or shared, or text) layers; the towers' depths derive from it
    image: int = IMAGE
    patch: int = PATCH
    region_dim: int = REGION_DIM

    def block(self, **extra) -> dict:
        base = dict(
            hidden_size=self.hidden,
            num_attention_heads=self.heads,
            intermediate_size=2 * self.hidden,
        )
        return {**base, **extra}


TINY = Size()


def vilt(folder: Path, size: Size = TINY) -> None:
    tok = bert_tokenizer()
    cfg = T.ViltConfig(
        **size.block(num_hidden_layers=size.layers),
        vocab_size=len(tok),
        image_size=size.image,
        patch_size=size.patch,
        max_position_embeddings=40,
        max_image_length=-1,
    )
    image = T.ViltImageProcessor(size={"shortest_edge": size.image}, size_divisor=size.patch)
    T.ViltModel(cfg).save_pretrained(folder)
    T.ViltProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)


def bridgetower(folder: Path, size: Size = TINY) -> None:
    tok = roberta_tokenizer()
    text = size.block(vocab_size=len(tok), num_hidden_layers=size.layers + 1)
    cfg = T.BridgeTowerConfig(
        hidden_size=size.hidden,
        num_attention_heads=size.heads,
        num_hidden_layers=size.layers,
        text_config={**text, "max_position_embeddings": 80},
        # the vision tower has one head per 64 units
        vision_config=dict(
            hidden_size=max(64, size.hidden),
            num_hidden_layers=size.layers + 1,
            patch_size=size.patch,
            image_size=size.image,
        ),
    )
    edge = {"shortest_edge": size.image}
    image = T.BridgeTowerImageProcessor(size=edge, crop_size=edge, size_divisor=size.patch)
    T.BridgeTowerModel(cfg).save_pretrained(folder)
    T.BridgeTowerProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)


def clip(folder: Path, size: Size = TINY) -> None:
    """Towers of different depths: the text tower has one layer fewer."""
    tok = clip_tokenizer()
    special = dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    text = size.block(vocab_size=len(tok), num_hidden_layers=size.layers, **special)
    vision = size.block(num_hidden_layers=size.layers + 1, image_size=size.image)
    cfg = T.CLIPConfig(
        text_config={**text, "max_position_embeddings": 77},
        vision_config={**vision, "patch_size": size.patch},
        projection_dim=16,
    )
    square = {"height": size.image, "width": size.image}
    image = T.CLIPImageProcessor(size={"shortest_edge": size.image}, crop_size=square)
    T.CLIPModel(cfg).save_pretrained(folder)
    T.CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)


def siglip(folder: Path, size: Size = TINY) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok = siglip_tokenizer(folder)
    special = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    text = size.block(vocab_size=len(tok), num_hidden_layers=size.layers, **special)
    vision = size.block(num_hidden_layers=size.layers, image_size=size.image)
    cfg = T.SiglipConfig(
        text_config={**text, "max_position_embeddings": 16},
        vision_config={**vision, "patch_size": size.patch},
    )
    image = T.SiglipImageProcessor(size={"height": size.image, "width": size.image})
    T.SiglipModel(cfg).save_pretrained(folder)
    T.SiglipProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)


def lxmert(folder: Path, size: Size = TINY) -> None:
    tok = bert_tokenizer()
    cfg = T.LxmertConfig(
        **size.block(),
        vocab_size=len(tok),
        l_layers=size.layers,
        r_layers=max(1, size.layers - 1),
        x_layers=size.layers,
        visual_feat_dim=size.region_dim,
        visual_pos_dim=4,
        max_position_embeddings=40,
        num_qa_labels=3,
        num_object_labels=3,
        num_attr_labels=3,
    )
    T.LxmertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


def visual_bert(folder: Path, size: Size = TINY) -> None:
    tok = bert_tokenizer()
    cfg = T.VisualBertConfig(
        **size.block(num_hidden_layers=size.layers),
        vocab_size=len(tok),
        visual_embedding_dim=size.region_dim,
        max_position_embeddings=40,
    )
    T.VisualBertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


BUILDERS: dict[str, Callable[[Path, Size], None]] = {
    "bridgetower": bridgetower,
    "vilt": vilt,
    "clip": clip,
    "siglip": siglip,
    "lxmert": lxmert,
    "visual_bert": visual_bert,
}


def build(root: Path, seed: int = 7, size: Size = TINY) -> dict[str, Path]:
    """Every model, saved with its processor, in ``root/<name>`` (seeded apart from the
    at-initialisation references, which default to seed 0)."""
    folders = {}
    for name, builder in BUILDERS.items():
        torch.manual_seed(seed)
        folders[name] = root / name
        builder(folders[name], size)
    return folders


def write_regions(
    path: Path,
    ids: list[str],
    seed: int = 0,
    num_boxes: list[int] | None = None,
    dim: int = REGION_DIM,
) -> Path:
    """A region-feature file (the documented .npz format) with random regions per id."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 0.5, (len(ids), REGIONS, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0.1, 0.5, corners.shape)], axis=-1)
    arrays = {
        "ids": np.array(ids, dtype=str),
        "features": rng.normal(size=(len(ids), REGIONS, dim)).astype(np.float32),
        "boxes": boxes.astype(np.float32),
    }
    if num_boxes is not None:
        arrays["num_boxes"] = np.array(num_boxes)
    np.savez(path, **arrays)
    return path

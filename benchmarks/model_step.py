"""One training step (forward + backward + AdamW) of the tiny vilalign model vs. LXMERT.

Both models run side by side in one process on the same CPU, interleaved, so machine
noise hits both alike. LXMERT (``transformers.LxmertModel``) is configured to the same
hidden size, heads, feed-forward width, vocabulary and sequence lengths: 2 language
layers (our 2 BERT layers), 2 relationship layers (our 2 ViT blocks) and 2 cross-modality
layers (each = cross-attention + self-attention + FFN per stream, i.e. our 4 fusion
layers: 2 co-attention + 2 self-attention). LXMERT gets the 64 patches + CLS as 65
"object" features of 8×8×3 pixels. Prints time per step and the ratio.

    python benchmarks/model_step.py [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from transformers import LxmertConfig, LxmertModel

from vilalign.commands import HelpFormatter
from vilalign.config import model_config
from vilalign.model import build_model

NUM_LABELS = 13


def vilalign_step_fn(batch_size: int, seq_len: int):
    torch.manual_seed(0)
    cfg = model_config("tiny", num_labels=NUM_LABELS)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (batch_size, seq_len))
    mask = torch.ones_like(ids)
    pixels = torch.randn(batch_size, 3, cfg.image.img_size, cfg.image.img_size)
    labels = torch.randint(0, NUM_LABELS, (batch_size,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(ids, mask, pixels).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    return step, params


def lxmert_step_fn(batch_size: int, seq_len: int):
    torch.manual_seed(0)
    cfg = model_config("tiny")
    n_boxes = (cfg.image.img_size // cfg.image.patch_size) ** 2 + 1
    config = LxmertConfig(
        vocab_size=30522,
        hidden_size=cfg.text.hidden_size,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.text.intermediate_size,
        l_layers=cfg.text.num_layers,
        r_layers=cfg.image.depth,
        x_layers=len(cfg.coattention_layers),
        visual_feat_dim=3 * cfg.image.patch_size**2,
        visual_pos_dim=4,
        num_qa_labels=NUM_LABELS,
    )
    model = LxmertModel(config).train()
    head = nn.Linear(config.hidden_size, NUM_LABELS)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-4)
    ids = torch.randint(1000, 30000, (batch_size, seq_len))
    mask = torch.ones_like(ids)
    feats = torch.randn(batch_size, n_boxes, config.visual_feat_dim)
    boxes = torch.rand(batch_size, n_boxes, 4)
    labels = torch.randint(0, NUM_LABELS, (batch_size,))

    def step() -> None:
        out = model(input_ids=ids, attention_mask=mask, visual_feats=feats, visual_pos=boxes)
        loss = nn.functional.cross_entropy(head(out.pooled_output), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
    return step, params


def step_flops(step) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step")
    parser.add_argument("--seq-len", type=int, default=24, help="text tokens per sample")
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="timed steps of each model, median reported",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps of each model first",
    )
    args = parser.parse_args(argv)

    ours, ours_params = vilalign_step_fn(args.batch_size, args.seq_len)
    ref, ref_params = lxmert_step_fn(args.batch_size, args.seq_len)
    for _ in range(args.warmup):
        ours()
        ref()
    t_ours, t_ref = [], []
    for _ in range(args.steps):  # interleaved: both see the same machine noise
        t_ours.append(timed(ours))
        t_ref.append(timed(ref))
    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
    f_ours, f_ref = step_flops(ours), step_flops(ref)
    print(f"threads={torch.get_num_threads()} batch={args.batch_size} seq_len={args.seq_len}")
    for name, t, f, n in (
        ("vilalign tiny", m_ours, f_ours, ours_params),
        ("LXMERT (same)", m_ref, f_ref, ref_params),
    ):
        print(
            f"{name} : {t * 1e3:8.1f} ms/step  {f / 1e9:6.2f} GFLOP/step  "
            f"{f / t / 1e9:6.2f} GFLOP/s  ({n / 1e6:.2f} M params)"
        )
    print(
        f"ratio vilalign/LXMERT: time {m_ours / m_ref:.2f}x  (target <= 1.0x), "
        f"FLOPs {f_ours / f_ref:.2f}x, time per FLOP {(m_ours / f_ours) / (m_ref / f_ref):.2f}x"
    )
    # Why FLOPs differ: ViLBERT's co-attention block has its own feed-forward per stream
    # (BertConnectionLayer), and the self-attention fusion layers have theirs; an LXMERT
    # cross-modality layer runs cross-attention, self-attention and ONE feed-forward per
    # stream. Same layer count, so vilalign does more arithmetic per step.


if __name__ == "__main__":
    main()

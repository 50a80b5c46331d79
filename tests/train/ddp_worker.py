"""One rank of the DDP tests, launched as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    python ddp_worker.py OUT_DIR

Runs every scenario in one process start (importing torch dominates the cost) and writes
what the test compares into OUT_DIR: ``contrastive-<rank>.pt`` from every rank,
``align-<rank>.pt`` (and ``align<rank>/``) from the alignment analysis, ``train.pt`` (and
the run folder ``run<rank>``, the checkpoint after step 2 copied to ``ckpt-step2``) from
the Trainer run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # two ranks on a small shared machine

from conftest import ToyDataset, small_config  # noqa: E402
from vilalign import distributed as D  # noqa: E402
from vilalign.data import Collator  # noqa: E402
from vilalign.model import build_model, load_tokenizer  # noqa: E402
from vilalign.train.config import OptimConfig, TrainConfig  # noqa: E402
from vilalign.train.distributed import (  # noqa: E402
    gathered_info_nce,
    gathered_symmetric_info_nce,
)
from vilalign.train.loop import Trainer, seed_everything  # noqa: E402
from vilalign.train.tasks import FinetuneTask  # noqa: E402

# Rows of the contrastive scenario per rank: unequal, and one split with an empty rank.
SPLITS = {"uneven": [2, 4], "empty": [0, 6]}


def contrastive_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)


def contrastive(out: Path) -> None:
    rank = D.get_rank()
    a, b = contrastive_inputs()
    results = {}
    for name, sizes in SPLITS.items():
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        loss = gathered_symmetric_info_nce(la, lb, 0.1)
        loss.backward()
        results[f"itc-{name}"] = (loss.detach(), la.grad, lb.grad)
        # MIM-style: keys detached (the stop-gradient target)
        lq = a[rows].clone().requires_grad_()
        loss = gathered_info_nce(lq, b[rows], 0.1)
        loss.backward()
        results[f"mim-{name}"] = (loss.detach(), lq.grad, None)
    torch.save(results, out / f"contrastive-{rank}.pt")


def collate(tokenizer) -> Collator:
    return Collator(tokenizer, max_length=12, padding="max_length")


def make_trainer(run_dir: Path, batch_size: int, step_callbacks=()) -> Trainer:
    """The equivalence setup: no dropout, constant lr, global batch 8 (accumulated)."""
    seed_everything(0)
    model = build_model(small_config(dropout=0.0, attention_dropout=0.0))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = TrainConfig(
        batch_size=batch_size,
        target_batch_size=8,
        epochs=2,
        progress=False,
        monitor="val/accuracy",
        monitor_mode="max",
        checkpoint={"every_n_steps": 2},
        log_every_n_steps=1,
        device="cpu",
    )
    optim = OptimConfig(lr=1e-3, eps=1e-3, schedule="constant", warmup_ratio=0.0)

    def align_callback(ctx) -> dict[str, float]:
        # rank 0 alone runs it: it must not start collectives (the analysis gathers under DDP)
        table = alignment(None, ctx.task.model).table
        return {"align/cka": float(table[table.measure == "cka_linear"].value.mean())}

    return Trainer(
        FinetuneTask(model, "easyvqa"),
        cfg,
        optim,
        run_dir,
        ToyDataset(24),
        ToyDataset(6, seed=1),
        collate(load_tokenizer(small_config().text)),
        callbacks=[align_callback],
        step_callbacks=step_callbacks,
    )


def train(out: Path) -> None:
    rank = D.get_rank()

    def keep_step2(trainer: Trainer) -> None:
        if trainer.progress.step == 2 and trainer.is_main:
            shutil.copytree(trainer.ckpt_dir, out / "ckpt-step2")

    # Every rank gets its own folder, so the test sees which rank wrote what.
    trainer = make_trainer(out / f"run{rank}", batch_size=2, step_callbacks=[keep_step2])
    result = trainer.fit()
    if rank == 0:
        torch.save(
            {"state": trainer.task.state_dict(), "history": result.history}, out / "train.pt"
        )


def alignment(out_dir: Path | None, model: torch.nn.Module | None = None):
    """The alignment analysis of a model (default: a fixed one) on 9 toy samples."""
    from torch.utils.data import DataLoader

    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
    from vilalign.data import DataConfig

    if model is None:
        seed_everything(0)
        model = build_model(small_config())
    tokenizer = load_tokenizer(small_config().text)
    loader = DataLoader(ToyDataset(10), batch_size=3, collate_fn=collate(tokenizer))
    spec = AlignmentSpec(
        DataConfig(), "train", n_samples=9, measures=["cka_linear", "cosine"], max_length=12
    )
    info = RunInfo(run="ddp", seed=0)
    return run_alignment(model, tokenizer, spec, info, out_dir, loader, progress=False)


def main() -> None:
    out = Path(sys.argv[1])
    D.init_distributed("cpu")
    assert D.get_world_size() == int(os.environ["WORLD_SIZE"])
    contrastive(out)
    result = alignment(out / f"align{D.get_rank()}")
    torch.save(
        {"table": result.table.to_dict("list"), "ids": result.representations.ids},
        out / f"align-{D.get_rank()}.pt",
    )
    train(out)
    D.cleanup()


if __name__ == "__main__":
    main()

"""DDP on CPU with gloo, two processes on 127.0.0.1, against one process.

The two ranks are started once per session (``ddp_worker.py``, as torchrun would start
them); each test compares one of their outputs with the same computation in this
process: gathered contrastive losses and gradients, training with the same global batch,
which rank writes files, and resuming a 2-rank checkpoint in one process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vilalign.distributed import RankShard, gather_in_order, local_slots_kept
from vilalign.train.loop import EpochSampler
from vilalign.train.objectives import info_nce, symmetric_info_nce

WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD = 2


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(WORKER.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(WORKER.parent))
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker():
    return _worker_module()


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """Run the two ranks once; their outputs are what the tests read."""
    out = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return out


# ---------------------------------------------------------------------------- contrastive


@pytest.mark.parametrize("split", ["uneven", "empty"])
def test_gathered_contrastive_losses_equal_the_single_process_loss_and_gradients(
    ddp_out, worker, split
):
    a, b = worker.contrastive_inputs()
    ranks = [torch.load(ddp_out / f"contrastive-{r}.pt") for r in range(WORLD)]
    sizes = worker.SPLITS[split]

    ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
    symmetric_info_nce(ga, gb, 0.1).backward()
    loss, grad_a, grad_b = zip(*(r[f"itc-{split}"] for r in ranks), strict=True)
    # DDP optimises the mean of the rank losses and averages the gradients over ranks
    torch.testing.assert_close(torch.stack(loss).mean(), symmetric_info_nce(a, b, 0.1))
    torch.testing.assert_close(torch.cat(grad_a) / WORLD, ga.grad)
    torch.testing.assert_close(torch.cat(grad_b) / WORLD, gb.grad)
    assert [len(g) for g in grad_a] == sizes

    gq = a.clone().requires_grad_()
    info_nce(gq, b, 0.1).backward()
    loss, grad_q, _ = zip(*(r[f"mim-{split}"] for r in ranks), strict=True)
    torch.testing.assert_close(torch.stack(loss).mean(), info_nce(a, b, 0.1))
    torch.testing.assert_close(torch.cat(grad_q) / WORLD, gq.grad)


# ---------------------------------------------------------------------------- analysis


def test_alignment_over_two_ranks_equals_one_process_and_rank_zero_writes(ddp_out, worker):
    single = worker.alignment(None)
    for rank in range(WORLD):
        ddp = torch.load(ddp_out / f"align-{rank}.pt")
        assert ddp["ids"] == single.representations.ids == [f"toy-{i}" for i in range(9)]
        table = single.table.to_dict("list")
        assert ddp["table"]["measure"] == table["measure"]
        assert ddp["table"]["layer"] == table["layer"]
        assert ddp["table"]["value"] == pytest.approx(table["value"], rel=1e-4, abs=1e-6)
    assert (ddp_out / "align0" / "alignment.csv").is_file()
    assert not (ddp_out / "align1").exists()


# ---------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def single(worker, tmp_path_factory):
    """The same run in one process: micro-batch 4 = the two ranks' 2 + 2."""
    trainer = worker.make_trainer(tmp_path_factory.mktemp("single"), batch_size=4)
    return trainer, trainer.fit()


def test_two_ranks_train_like_one_process_with_the_same_global_batch(ddp_out, single):
    trainer, result = single
    ddp = torch.load(ddp_out / "train.pt")
    assert len(ddp["history"]) == len(result.history) == 2
    for mine, theirs in zip(result.history, ddp["history"], strict=True):
        assert mine["step"] == theirs["step"]
        for key in ("train/loss", "val/loss", "val/accuracy", "align/cka"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    for name, value in trainer.task.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_only_rank_zero_writes_files(ddp_out):
    assert not (ddp_out / "run1").exists()
    run0 = ddp_out / "run0"
    assert (run0 / "metrics.jsonl").is_file()
    assert (run0 / "checkpoints" / "latest.json").is_file()


def test_a_two_rank_checkpoint_resumes_in_one_process(ddp_out, single, worker, tmp_path):
    trainer, _ = single
    run = tmp_path / "resumed"
    shutil.copytree(ddp_out / "ckpt-step2", run / "checkpoints")
    resumed = worker.make_trainer(run, batch_size=4)
    assert resumed.resume()
    assert resumed.progress.step == 2 and resumed.progress.samples_in_epoch == 16
    resumed.fit()
    for name, value in trainer.task.state_dict().items():
        torch.testing.assert_close(resumed.task.state_dict()[name], value, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("size", [7, 8, 1])
def test_rank_shards_cover_the_order_in_contiguous_global_batches(size):
    sampler = EpochSampler(size, seed=3)
    order = list(sampler)
    shards = [list(RankShard(sampler, r, 3)) for r in range(3)]
    assert (
        len({len(s) for s in shards}) == 1 == len({len(RankShard(sampler, r, 3)) for r in range(3)})
    )
    interleaved = [shards[r][j] for j in range(len(shards[0])) for r in range(3)]
    assert interleaved[:size] == order  # micro-batch j of all ranks = a contiguous block
    assert set(interleaved[size:]) <= set(order)  # padding repeats, never invents


def test_gather_in_order_single_process_drops_padding():
    assert gather_in_order(torch.arange(5), 3).tolist() == [0, 1, 2]
    assert local_slots_kept(3, 7, rank=1, world_size=3).tolist() == [True, True, False]


# ---------------------------------------------------------------------------- end to end


RUN_FILE = """
preset: tiny
model: {image: {patch_size: 16}}
data: {name: captions_shards, root: "SHARDS", epoch_length: 16, shuffle_buffer: 8}
splits: {val_fraction: 0.0}
objectives:
  mlm: {weight: 1.0}
  mim: {weight: 0.5, gather_negatives: true}
  ap: {weight: 1.0}
  itc: {weight: 0.5}
train: {batch_size: 4, target_batch_size: 16, epochs: 2, num_workers: 1, progress: false}
"""


@pytest.mark.slow
def test_torchrun_pretrains_on_shards_with_two_ranks(tmp_path):
    """``torchrun --nproc_per_node 2 -m vilalign pretrain``: the command users run."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in range(4):
        with wds.TarWriter(str(tmp_path / f"{s:05d}.tar")) as sink:
            for i in range(16):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
                sink.write({"__key__": f"{s}-{i}", "jpg": buf.getvalue(), "txt": f"picture {i}"})
    run_file = tmp_path / "run.yaml"
    run_file.write_text(RUN_FILE.replace("SHARDS", str(tmp_path / "{00000..00003}.tar")))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), "-m", "vilalign", "pretrain", str(run_file)]
    cmd += ["--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports
    run = tmp_path / "run"
    for name in ("config.json", "results.json", "metrics.jsonl", "model/model.safetensors"):
        assert (run / name).is_file(), name
    assert '"step": 4' in (run / "checkpoints" / "latest.json").read_text()

"""Retrieval recall: hand-computed values, several captions per image, ties, tidy rows."""

from __future__ import annotations

import itertools

import pytest
import torch

from vilalign.analysis.align import RunInfo, alignment_table
from vilalign.analysis.collect import LayerInfo, Representations
from vilalign.analysis.retrieval import (
    average_over_images,
    average_representations,
    averaged_captions,
    caption_groups,
    recall_at_k,
    retrieval_table,
)

# 6 captions (rows) × 3 images (columns); captions 2r, 2r+1 describe image r.
SIM = torch.tensor([
    [0.9, 0.1, 0.2],  # caption 0 → image 0 ranked 1st
    [0.3, 0.5, 0.1],  # caption 1 → image 0 ranked 2nd
    [0.2, 0.8, 0.1],  # caption 2 → image 1 ranked 1st
    [0.7, 0.6, 0.9],  # caption 3 → image 1 ranked 3rd
    [0.1, 0.2, 0.3],  # caption 4 → image 2 ranked 1st
    [0.4, 0.3, 0.2],  # caption 5 → image 2 ranked 3rd
])  # fmt: skip
OWNER = [0, 0, 1, 1, 2, 2]


def test_hand_computed_multi_caption():
    r = recall_at_k(SIM, OWNER, ks=(1, 2, 3))
    assert r["recall@1_t2i"] == pytest.approx(3 / 6)
    assert r["recall@2_t2i"] == pytest.approx(4 / 6)
    assert r["recall@3_t2i"] == 1.0
    # image 0: caption 0 tops its column; image 1: caption 2; image 2: caption 3 (of
    # image 1) scores 0.9 above its own best caption 4 (0.3), so it hits only from K=2
    assert r["recall@1_i2t"] == pytest.approx(2 / 3)
    assert r["recall@2_i2t"] == 1.0 and r["recall@3_i2t"] == 1.0
    assert list(r) == [f"recall@{k}_{d}" for k in (1, 2, 3) for d in ("t2i", "i2t")]


def test_square_default_pairing():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.95, 0.2, 0.4], [0.1, 0.25, 0.3]])
    r = recall_at_k(sim, ks=(1, 2, 3))  # caption r ↔ image r
    assert r["recall@1_t2i"] == pytest.approx(2 / 3)  # caption 1 ranks image 1 last
    assert r["recall@2_t2i"] == pytest.approx(2 / 3)
    assert r["recall@1_i2t"] == 0.0  # every image prefers another caption
    assert r["recall@2_i2t"] == pytest.approx(2 / 3)  # images 0 and 2 find theirs second
    assert r["recall@3_t2i"] == 1.0 and r["recall@3_i2t"] == 1.0


@pytest.mark.parametrize("captions", [1, 5])
def test_identity_similarity_gives_recall_one(captions):
    owner = torch.arange(7).repeat_interleave(captions)
    sim = torch.nn.functional.one_hot(owner, 7).double()  # non-square when captions > 1
    assert set(recall_at_k(sim, owner).values()) == {1.0}


def test_ties_expected_optimistic_pessimistic():
    flat = torch.ones(4, 4)
    assert recall_at_k(flat, ks=(1, 2))["recall@1_t2i"] == pytest.approx(1 / 4)  # chance
    assert recall_at_k(flat, ks=(1, 2))["recall@2_t2i"] == pytest.approx(2 / 4)
    assert set(recall_at_k(flat, ks=(1,), ties="optimistic").values()) == {1.0}
    assert set(recall_at_k(flat, ks=(1, 3), ties="pessimistic").values()) == {0.0}
    # two images with two captions each, all tied: P(a random first caption is own) = 1/2;
    # P(neither of the first two is own) = 2/4 · 1/3
    r = recall_at_k(torch.ones(4, 2), [0, 0, 1, 1], ks=(1, 2))
    assert r["recall@1_i2t"] == pytest.approx(1 / 2)
    assert r["recall@2_i2t"] == pytest.approx(1 - 1 / 6)


def brute_force(sim: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Mean over queries of the hit rate averaged over every tie-breaking order."""
    n = sim.shape[1]
    rates = []
    for row, tgt in zip(sim.tolist(), target.tolist(), strict=True):
        hits = [
            any(tgt[c] for c in sorted(range(n), key=lambda c: (-row[c], perm[c]))[:k])
            for perm in itertools.permutations(range(n))
        ]
        rates.append(sum(hits) / len(hits))
    return sum(rates) / len(rates)


def test_expected_ties_equal_every_tie_order_averaged():
    g = torch.Generator().manual_seed(0)
    sim = torch.randint(0, 3, (6, 3), generator=g).double()  # many ties
    owner = torch.tensor(OWNER)
    t2i = torch.nn.functional.one_hot(owner, 3).bool()
    for k in (1, 2, 3):
        r = recall_at_k(sim, owner, ks=(k,))
        assert r[f"recall@{k}_t2i"] == pytest.approx(brute_force(sim, t2i, k))
        assert r[f"recall@{k}_i2t"] == pytest.approx(brute_force(sim.T, t2i.T, k))


@pytest.mark.parametrize(
    ("sim", "owner", "ks", "message"),
    [
        (torch.ones(1, 1), None, (1,), "at least 2 captions"),
        (torch.ones(4, 1), [0, 0, 0, 0], (1,), "at least 2 captions"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), None, (1,), "NaN"),
        (torch.eye(3)[:, :2], None, (1,), "non-square"),
        (torch.eye(3), [0, 1], (1,), "one image index per row"),
        (torch.eye(3), [0, 1, 3], (1,), r"indices must lie in \[0, 3\)"),
        (torch.eye(3), [0, 1, 1], (1,), "1 image\\(s\\) have no caption"),
        (torch.eye(3), None, (0, 1), "positive cut-offs"),
        (torch.eye(3), None, (), "positive cut-offs"),
    ],
)
def test_degenerate_inputs_raise(sim, owner, ks, message):
    with pytest.raises(ValueError, match=message):
        recall_at_k(sim, owner, ks)


def test_unknown_tie_rule_raises():
    with pytest.raises(ValueError, match="ties: unknown 'random'"):
        recall_at_k(torch.eye(3), ks=(1,), ties="random")  # type: ignore[arg-type]


def test_grouping_and_averaging_by_image():
    image_ids = ["7", "7", "3", "7", "3", "plain"]
    groups = caption_groups(image_ids)
    assert groups.images == ["7", "3", "plain"]
    assert groups.caption_image.tolist() == [0, 0, 1, 0, 1, 2]
    assert groups.counts.tolist() == [3, 2, 1]
    x = torch.tensor([[1.0], [2.0], [10.0], [6.0], [20.0], [5.0]])
    assert average_over_images(x, groups).flatten().tolist() == [3.0, 15.0, 5.0]
    with pytest.raises(ValueError, match="5 rows but there are 6 ids"):
        average_over_images(x[:5], groups)


def reps_for(ids: list[str]) -> Representations:
    """Two fusion layers: text equal to a per-image image state (perfect), and noise with
    unequal stream widths (skipped)."""
    g = torch.Generator().manual_seed(1)
    image_ids = [i.split("#")[0] for i in ids]  # what the Karpathy reader sets
    groups = caption_groups(image_ids)
    image = torch.randn(len(groups.images), 8, generator=g)[groups.caption_image]
    text = image + 0.01 * torch.randn(len(ids), 8, generator=g)  # own image still nearest
    layers = [
        LayerInfo("fusion.0", 0, "coattention", ("text", "image")),
        LayerInfo("fusion.1", 1, "self_attention", ("text", "image")),
    ]
    pooled = {
        ("fusion.0", "text", "cls"): text,
        ("fusion.0", "image", "cls"): image,
        ("fusion.1", "text", "cls"): torch.randn(len(ids), 8, generator=g),
        ("fusion.1", "image", "cls"): torch.randn(len(ids), 6, generator=g),
    }
    return Representations(ids, layers, ("cls",), pooled, image_ids=image_ids)


def test_retrieval_rows_join_the_alignment_table():
    ids = [f"{i}#{j}" for i in (4, 9, 2, 5) for j in range(5)]
    reps = reps_for(ids)
    info = RunInfo(run="r", seed=3, epoch=1, dataset="coco_karpathy")
    table = retrieval_table(reps, info, ks=(1, 5))
    assert list(table.columns) == list(
        alignment_table(reps, ("cka_linear",), info, progress=False).columns
    )
    assert set(table["layer"]) == {"fusion.0"}  # fusion.1: stream widths differ
    assert sorted(table["measure"]) == sorted(
        f"recall@{k}_{d}" for k in (1, 5) for d in ("t2i", "i2t")
    )
    assert (table["value"] == 1.0).all() and table["ci_low"].isna().all()
    assert set(table["layer_kind"]) == {"coattention"} and set(table["seed"]) == {3}
    avg = retrieval_table(reps, info, ks=(1,), average_captions=True)
    assert sorted(avg["measure"]) == ["recall@1_i2t_avg", "recall@1_t2i_avg"]
    assert (avg["value"] == 1.0).all()


def test_averaged_captions_from_representations():
    ids = ["4#0", "4#1", "9#0", "9#1"]
    reps = reps_for(ids)
    text, images = averaged_captions(reps, "fusion.0", "cls")
    assert images == ["4", "9"] and text.shape == (2, 8)
    full = reps.get("fusion.0", "text", "cls")
    assert torch.allclose(text[1], full[2:].mean(0))


def test_average_representations_gives_one_row_per_image_in_both_streams():
    ids = ["4#0", "9#0", "4#1", "9#1", "4#2"]
    reps = reps_for(ids)
    avg = average_representations(reps)
    assert avg.ids == avg.image_ids == ["4", "9"]
    for key in reps.pooled:
        full = reps.get(*key)
        torch.testing.assert_close(avg.get(*key)[0], full[[0, 2, 4]].mean(0))
        torch.testing.assert_close(avg.get(*key)[1], full[[1, 3]].mean(0))
    reps.tokens[("fusion.0", "text")] = torch.zeros(5, 3, 8)
    with pytest.raises(ValueError, match="token states"):
        average_representations(reps)

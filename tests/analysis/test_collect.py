from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vilalign.analysis.collect import collect
from vilalign.config import model_config
from vilalign.data.types import Batch
from vilalign.model import build_model, load_tokenizer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = model_config("tiny", num_labels=3)
    model = build_model(cfg).eval()
    tok = load_tokenizer(cfg.text)
    texts = [
        "a red circle",
        "what color is the big blue shape?",
        "no",
        "is it a triangle?",
        "green",
        "the shape is gray",
        "yes",
        "what shape is it?",
    ]
    batches = []
    for start in range(0, len(texts), 3):
        chunk = texts[start : start + 3]
        enc = tok(chunk, padding="longest", return_tensors="pt")  # T differs per batch
        batches.append(
            Batch(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"],
                pixel_values=torch.randn(len(chunk), 3, 64, 64),
                ids=[f"s{start + i}" for i in range(len(chunk))],
            )
        )
    return model, batches


def test_collected_views_equal_the_models_own_layer_outputs(setup):
    model, batches = setup
    reps = collect(
        model, batches, num_samples=8, views=("cls", "mean"), include_encoders=True, progress=False
    )
    assert reps.ids == [f"s{i}" for i in range(8)]
    kinds = {i.name: i.kind for i in reps.layers}
    assert kinds["fusion.1"] == "coattention" and kinds["fusion.0"] == "self_attention"
    assert kinds["text_encoder.1"] == "encoder" and kinds["image_encoder.1"] == "encoder"
    row = 0
    for b in batches:
        with torch.no_grad():
            out = model(
                b.input_ids,
                b.attention_mask,
                b.pixel_values,
                b.token_type_ids,
                output_hidden_states=True,
            )
        n = len(b)
        m = b.attention_mask[..., None].float()
        for i in range(4):
            text, image = out.text_states[i], out.image_states[i]
            got = reps.get(f"fusion.{i}", "text", "cls")[row : row + n]
            torch.testing.assert_close(got, text[:, 0])
            got = reps.get(f"fusion.{i}", "text", "mean")[row : row + n]
            torch.testing.assert_close(got, (text * m).sum(1) / m.sum(1))
            got = reps.get(f"fusion.{i}", "image", "mean")[row : row + n]
            torch.testing.assert_close(got, image[:, 1:].mean(1))
        # Encoder layer i = hidden state i + 1 (index 0 is the embeddings).
        torch.testing.assert_close(
            reps.get("text_encoder.1", "text", "cls")[row : row + n],
            out.encoder_text_states[2][:, 0],
        )
        torch.testing.assert_close(
            reps.get("image_encoder.0", "image", "cls")[row : row + n],
            out.encoder_image_states[1][:, 0],
        )
        # The last ViT block is recorded after the ViT's final norm: what fusion sees.
        torch.testing.assert_close(
            reps.get("image_encoder.1", "image", "cls")[row : row + n],
            model.image_encoder.vit.norm(out.encoder_image_states[2])[:, 0],
        )
        row += n


def test_token_view_pads_and_masks(setup, tmp_path):
    model, batches = setup
    reps = collect(
        model,
        batches,
        num_samples=5,
        views=("tokens",),
        progress=False,
        spill_dir=tmp_path,
        dtype=torch.float16,
    )
    text = reps.get("fusion.3", "text", "tokens")
    image = reps.get("fusion.3", "image", "tokens")
    assert text.shape[:2] == reps.text_mask.shape and text.shape[0] == 5
    assert image.shape == (5, 64, 128)  # patches only, CLS excluded
    assert (text[reps.text_mask == 0] == 0).all()
    assert any(tmp_path.glob("*.npy"))
    with pytest.raises(KeyError, match="'cls' view"):
        reps.get("fusion.3", "text", "cls")


def test_fewer_samples_than_asked_and_bad_views(setup):
    model, batches = setup
    reps = collect(model, batches[:1], num_samples=10, progress=False)
    assert len(reps.ids) == 3 and reps.get("fusion.0", "text", "cls").shape[0] == 3
    with pytest.raises(ValueError, match="views"):
        collect(model, batches, num_samples=4, views=("pooled",))


def test_alignment_table_is_tidy_and_matches_direct_measures(setup):
    from vilalign.analysis import measures as M
    from vilalign.analysis.align import RunInfo, alignment_table, layer_matrix

    model, batches = setup
    reps = collect(
        model,
        batches,
        num_samples=8,
        views=("cls", "mean", "tokens"),
        include_encoders=True,
        progress=False,
    )
    table = alignment_table(
        reps,
        ["cka_linear", "cosine", "maxsim_text_to_patch"],
        RunInfo(run="r", seed=1, epoch=2, dataset="toy"),
        options={},
        progress=False,
    )
    assert list(table.columns)[:12] == [  # then the columns issue 14 added (report.ADDED)
        "run",
        "seed",
        "epoch",
        "dataset",
        "layer",
        "layer_kind",
        "view",
        "measure",
        "value",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    assert len(table) == 4 * (2 * 2 + 1)  # 4 fusion layers × (2 pooled views × 2 + 1 token)
    row = table.query("layer == 'fusion.1' and view == 'cls' and measure == 'cka_linear'")
    assert row.layer_kind.item() == "coattention"
    direct = M.cka_linear(reps.get("fusion.1", "text", "cls"), reps.get("fusion.1", "image", "cls"))
    assert row.value.item() == pytest.approx(direct)
    matrix = layer_matrix(reps, "cka_linear", "cls")
    assert matrix.shape == (2 + 4, 2 + 4)  # (text encoder + fusion) × (image encoder + fusion)
    assert matrix.loc["fusion.1", "fusion.1"] == pytest.approx(direct)
    with pytest.raises(ValueError, match="unknown measure 'ckaa'"):
        alignment_table(reps, ["ckaa"], progress=False)


def test_rows_carry_the_image_ids_of_their_batches(setup):
    model, batches = setup
    shown = [replace(b, image_ids=[f"img{int(i[1:]) // 2}" for i in b.ids]) for b in batches]
    reps = collect(model, shown, num_samples=5, progress=False)
    assert reps.image_ids == ["img0", "img0", "img1", "img1", "img2"]
    # a hand-made batch without image ids: every row shows its own image
    assert collect(model, batches, num_samples=4, progress=False).image_ids == reps.ids[:4]


def test_collection_beyond_the_budget_goes_to_disk_with_the_same_values(setup):
    import gc

    from vilalign.analysis.measures import settings
    from vilalign.analysis.store import DiskRows

    model, batches = setup
    kept = collect(model, batches, num_samples=8, views=("cls", "mean"), progress=False)
    with settings(memory_gb=1e-5):  # 5 kB in memory: most arrays go to files
        spilled = collect(model, batches, num_samples=8, views=("cls", "mean"), progress=False)
    on_disk = [k for k, v in spilled.pooled.items() if isinstance(v, DiskRows)]
    assert len(on_disk) >= len(spilled.pooled) - 1
    folder = spilled.pooled[on_disk[0]].path.parent
    for key in kept.pooled:
        torch.testing.assert_close(spilled.get(*key), kept.get(*key), rtol=0, atol=0)
    del spilled, on_disk
    gc.collect()
    assert not folder.exists()  # the temporary files go with the representations


def test_non_finite_states_fail_at_once_naming_layer_and_samples(setup):
    model, batches = setup

    def poison(_module, _inputs, output):
        output[1][1] = float("nan")  # image states of the batch's second sample

    handle = model.fusion_layers[2].register_forward_hook(poison)
    try:
        with pytest.raises(ValueError) as err:
            collect(model, batches, num_samples=8, progress=False)
    finally:
        handle.remove()
    message = str(err.value)
    assert "states of fusion.2 (image stream)" in message and "ids: ['s1']" in message


def test_all_samples_of_a_split(tmp_path):
    from tests.data.helpers import write_flickr_karpathy

    from vilalign.analysis.align import RunInfo
    from vilalign.analysis.pipeline import AlignmentSpec, run_alignment
    from vilalign.cli import build_parser
    from vilalign.config import model_config
    from vilalign.data import DataConfig
    from vilalign.model import build_model, load_tokenizer

    args = build_parser().parse_args(["analyse", "--preset", "tiny", "--n-samples", "all"])
    assert args.n_samples == "all"
    root = write_flickr_karpathy(tmp_path, images=3, captions=2)
    cfg = model_config("tiny")
    torch.manual_seed(0)
    data = DataConfig(name="flickr30k_karpathy", root=str(root))
    spec = AlignmentSpec(data, "test", n_samples="all", views=("cls",), measures=("cka_linear",))
    result = run_alignment(build_model(cfg).eval(), load_tokenizer(cfg.text), spec, RunInfo(),
                           progress=False)  # fmt: skip
    assert len(result.representations.ids) == 6
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        AlignmentSpec(data, "test", n_samples=1)

"""The region-feature file LXMERT and VisualBERT read: its format, and its errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.adapters import tiny
from tests.adapters.conftest import make_samples
from vilalign.adapters import MissingRegionsError, RegionFeatureError, RegionFeatures, load_hf_model


def test_lookup_pads_to_the_most_regions_and_masks_the_rest(region_file):
    regions = RegionFeatures(region_file)
    samples = make_samples()
    out = regions.lookup([samples[2], samples[4]])  # 3 and 4 real regions
    assert out["region_features"].shape == (2, 4, tiny.REGION_DIM)
    assert out["region_boxes"].shape == (2, 4, 4)
    assert out["region_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with np.load(region_file) as f:
        np.testing.assert_array_equal(out["region_features"][1].numpy(), f["features"][4, :4])


def test_a_folder_of_npy_files_reads_like_the_npz(region_file, tmp_path):
    with np.load(region_file) as f:
        for key in f.files:
            np.save(tmp_path / f"{key}.npy", f[key])
    samples = make_samples()[:3]
    a, b = RegionFeatures(region_file).lookup(samples), RegionFeatures(tmp_path).lookup(samples)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_image_id_is_looked_up_before_the_sample_id(tmp_path):
    @dataclasses.dataclass
    class WithImage:
        id: str
        image_id: str

    path = tiny.write_regions(tmp_path / "r.npz", ["img7", "q1"])
    regions = RegionFeatures(path)
    assert regions.row(WithImage(id="q1", image_id="img7")) == 0
    assert regions.row(WithImage(id="q1", image_id="not-there")) == 1


def test_missing_ids_name_the_file_and_the_id(region_file):
    samples = make_samples()
    stranger = dataclasses.replace(samples[0], id="coco-391895", image_id="coco-391895")
    with pytest.raises(MissingRegionsError) as err:
        RegionFeatures(region_file).lookup([samples[1], stranger])
    assert str(region_file) in str(err.value) and "'coco-391895'" in str(err.value)
    assert "holds 6 ids" in str(err.value)


def test_a_collator_over_missing_ids_fails_in_the_loader(adapters):
    stranger = dataclasses.replace(make_samples()[0], id="unknown-7", image_id="unknown-7")
    with pytest.raises(MissingRegionsError, match="unknown-7"):
        adapters["visual_bert"].encode([stranger])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("boxes"), "no boxes array"),
        (lambda a: a.update(boxes=a["boxes"][:, :, :3]), "boxes must be"),
        (lambda a: a.update(ids=np.array(["s0", "s0", "s2"])), "id 's0' appears more than once"),
        (lambda a: a.update(num_boxes=np.array([5, 9, 1])), "num_boxes must be"),
        (lambda a: a.update(ids=np.array(["s0", "s1", "s2"], dtype=object)), "dtype=str"),
    ],
)
def test_malformed_files_name_the_file_and_the_field(tmp_path, change, message):
    path = tiny.write_regions(tmp_path / "r.npz", ["s0", "s1", "s2"])
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(path, **arrays)
    with pytest.raises(RegionFeatureError, match=message) as err:
        RegionFeatures(path)
    assert str(path) in str(err.value)


def test_boxes_must_be_normalised(tmp_path):
    path = tiny.write_regions(tmp_path / "r.npz", ["s0", "s1"])
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["boxes"] = arrays["boxes"] * 640  # pixels, not fractions of the image
    np.savez(path, **arrays)
    with pytest.raises(RegionFeatureError, match="boxes of id 's0' are not normalised"):
        RegionFeatures(path).lookup(make_samples()[:1])


def test_features_of_the_wrong_width_are_refused(folders, tmp_path):
    path = tmp_path / "wide.npz"
    np.savez(path, ids=np.array(["s0"]), features=np.zeros((1, 2, 7), np.float32),
             boxes=np.full((1, 2, 4), 0.5, np.float32))  # fmt: skip
    with pytest.raises(RegionFeatureError, match=r"7 dimensions but .*LxmertModel.* reads 16"):
        load_hf_model(folders["lxmert"], regions=path)


def test_a_batch_without_regions_is_refused_naming_the_model(adapters):
    from vilalign.adapters import AdapterError
    from vilalign.data.types import Batch

    ids = torch.tensor([[2, 10, 3]])
    batch = Batch(ids, torch.ones_like(ids), torch.zeros_like(ids), torch.empty(1, 0))
    with pytest.raises(AdapterError, match=r"LxmertModel\): the batch has no region features"):
        adapters["lxmert"].layer_states(batch)

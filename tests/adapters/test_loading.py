"""Loading as the ecosystem does, and every kind of bad input refused with a clear error."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from tests.adapters import tiny
from vilalign.adapters import (
    AdapterError,
    ImageSizeError,
    ModelNotAvailableError,
    ProcessorMismatchError,
    UnsupportedModelError,
    adapt,
    load_hf_model,
    supported_models,
)
from vilalign.adapters.base import Adapter

CLASSES = {
    "bridgetower": "BridgeTowerAdapter",
    "vilt": "ViltAdapter",
    "clip": "ClipAdapter",
    "siglip": "SiglipAdapter",
    "lxmert": "LxmertAdapter",
    "visual_bert": "VisualBertAdapter",
}


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_saved_folder_loads_into_its_adapter_in_eval_mode(name, adapters, folders):
    adapter = adapters[name]
    assert type(adapter).__name__ == CLASSES[name]
    assert isinstance(adapter, Adapter) and not adapter.training
    assert adapter.name == str(folders[name])
    assert type(adapter.model).__name__ == supported_models()[name]


def test_every_registered_class_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "adapters.md").read_text()
    for model_type, cls in supported_models().items():
        assert cls in doc and f"`{model_type}`" in doc, cls


def test_a_task_model_is_read_through_its_base_model(folders):
    cfg = T.AutoConfig.from_pretrained(folders["vilt"])
    cfg.num_labels = 3
    task = T.ViltForQuestionAnswering(cfg)
    processor = T.AutoProcessor.from_pretrained(folders["vilt"])
    adapter = adapt(task, processor, name="vqa")
    assert adapter.model is task.vilt


def test_a_model_without_adapter_lists_the_supported_ones(tmp_path):
    cfg = T.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
    )
    T.BertModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        load_hf_model(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "(bert)" in message
    for cls in ("BridgeTowerModel", "ViltModel", "CLIPModel", "SiglipModel", "LxmertModel"):
        assert cls in message
    assert "docs/adapters.md" in message


def test_a_name_not_available_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"no-such-org/no-such-model.*HF_HUB_OFFLINE"):
        load_hf_model("no-such-org/no-such-model")
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        load_hf_model(tmp_path)


def test_a_processor_made_for_another_model_is_refused(folders, adapters):
    clip = adapters["clip"].model
    siglip_processor = T.AutoProcessor.from_pretrained(folders["siglip"])
    with pytest.raises(ProcessorMismatchError, match=r"SiglipProcessor does not match .*CLIPModel"):
        adapt(clip, siglip_processor, name="clip")
    # the right class, but a tokenizer larger than the model's embedding table
    vilt = adapters["vilt"].model
    wide = T.ViltProcessor(image_processor=adapters["vilt"].processor.image_processor,
                           tokenizer=tiny.clip_tokenizer())  # fmt: skip
    with pytest.raises(ProcessorMismatchError, match=r"has 514 tokens but .*ViltModel.* embeds"):
        adapt(vilt, wide, name="vilt")
    # an image processor that makes images of another size
    big = {"height": 2 * tiny.IMAGE, "width": 2 * tiny.IMAGE}
    image = T.CLIPImageProcessor(crop_size=big, size={"shortest_edge": 64})
    other = T.CLIPProcessor(image_processor=image, tokenizer=adapters["clip"].tokenizer)
    with pytest.raises(ProcessorMismatchError, match=r"makes 64×64 images but .* takes 32×32"):
        adapt(clip, other, name="clip")


def test_images_of_the_wrong_size_name_the_model_and_the_sizes(adapters, samples):
    adapter = adapters["bridgetower"]
    batch = adapter.encode(samples[:2])
    batch.pixel_values = torch.zeros(2, 3, 48, 48)
    with pytest.raises(ImageSizeError, match=r"BridgeTowerModel\) takes 32×32 images.*got 48×48"):
        adapter.layer_states(batch)


def test_regions_are_only_for_region_models(folders, region_file):
    with pytest.raises(AdapterError, match="reads images, not a region-feature file"):
        load_hf_model(folders["clip"], regions=region_file)
    bare = load_hf_model(folders["lxmert"])
    with pytest.raises(AdapterError, match="vilalign does not run a detector"):
        bare.collator(16)


def test_the_documented_recipe_adds_a_model_in_one_class(tmp_path):
    """docs/adapters.md's Chinese-CLIP example, registered here, reads a tiny model."""
    from vilalign.adapters.base import _ADAPTERS, register_adapter
    from vilalign.adapters.dual_encoder import DualEncoderAdapter
    from vilalign.analysis.collect import collect

    class ChineseClipAdapter(DualEncoderAdapter):
        model_types = ("chinese_clip",)
        model_class = "ChineseCLIPModel"
        processor_classes = ("ChineseCLIPProcessor",)

        def text_summary(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device)

    tok = tiny.bert_tokenizer()
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    cfg = T.ChineseCLIPConfig(
        text_config=dict(small, vocab_size=len(tok), max_position_embeddings=40),
        vision_config=dict(small, image_size=tiny.IMAGE, patch_size=tiny.PATCH),
        projection_dim=16,
    )
    size = {"height": tiny.IMAGE, "width": tiny.IMAGE}
    image = T.ChineseCLIPImageProcessor(size={"shortest_edge": tiny.IMAGE}, crop_size=size)
    T.ChineseCLIPModel(cfg).save_pretrained(tmp_path)
    T.ChineseCLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="chinese_clip"):
        load_hf_model(tmp_path)
    register_adapter(ChineseClipAdapter)
    try:
        adapter = load_hf_model(tmp_path)
        from tests.adapters.conftest import make_samples

        reps = collect(adapter, [adapter.encode(make_samples()[:4])], 4, progress=False)
    finally:
        del _ADAPTERS["chinese_clip"]
    assert [i.name for i in reps.fusion_layers] == ["encoder.0", "encoder.1"]
    assert reps.get("encoder.1", "text", "cls").shape == (4, 32)

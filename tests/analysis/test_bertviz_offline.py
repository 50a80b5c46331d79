"""The bertviz page offline: d3 and jQuery inlined from a Debian-style folder when present,
a warning that names the fix when not, and the sample's predicted label on the page."""

from __future__ import annotations

import logging

import pytest
import torch

from vilalign.analysis.attention import export_bertviz, local_js_assets
from vilalign.config import model_config
from vilalign.data import Batch
from vilalign.model import build_model, load_tokenizer

NAMES = ["circle", "square", "yes"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", num_labels=3, label_names=NAMES)).eval()
    return model, load_tokenizer(model.config.text)


def batch(tokenizer) -> Batch:
    enc = tokenizer(["a red square", "is there a circle?"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return Batch(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], pixels,
                 ids=["q-0", "q-1"])  # fmt: skip


def fake_js_dir(root):
    """A folder laid out as Debian's /usr/share/javascript, with marked stand-ins."""
    (root / "d3").mkdir(parents=True)
    (root / "jquery").mkdir()
    (root / "d3" / "d3.min.js").write_text("window.d3 = {marker: 'LOCAL-D3'};")
    (root / "jquery" / "jquery.min.js").write_text("window.jQuery = {marker: 'LOCAL-JQ'};")
    return root


def test_libraries_under_the_js_folder_are_inlined(tiny, tmp_path, monkeypatch):
    root = fake_js_dir(tmp_path / "javascript")
    monkeypatch.setenv("VILALIGN_JS_DIR", str(root))
    assert local_js_assets() == {
        "d3": root / "d3/d3.min.js", "jquery": root / "jquery/jquery.min.js",
    }  # fmt: skip
    model, tok = tiny
    page = export_bertviz(model, batch(tok), tmp_path / "v.html", tok).read_text()
    assert "LOCAL-D3" in page and "LOCAL-JQ" in page
    assert "require.min.js" not in page and "cdnjs" not in page.split("require.config")[0]


def test_one_library_missing_means_the_cdn_and_a_warning_naming_the_fix(
    tiny, tmp_path, monkeypatch, caplog
):
    root = fake_js_dir(tmp_path / "javascript")
    (root / "d3" / "d3.min.js").unlink()  # libjs-jquery without libjs-d3
    monkeypatch.setenv("VILALIGN_JS_DIR", str(root))
    assert local_js_assets() is None
    model, tok = tiny
    with caplog.at_level(logging.WARNING):
        page = export_bertviz(model, batch(tok), tmp_path / "v.html", tok).read_text()
    assert "require.min.js" in page  # bertviz's CDN loader, unchanged
    assert "apt-get install libjs-d3 libjs-jquery" in caplog.text
    assert "make offline-js" in caplog.text and str(root) in caplog.text


def test_the_page_names_the_sample_and_its_predicted_label(tiny, tmp_path):
    model, tok = tiny
    b = batch(tok)
    page = export_bertviz(model, b, tmp_path / "v.html", tok, index=1, inline_js=None)
    with torch.no_grad():
        logits = model(b.input_ids, b.attention_mask, b.pixel_values).logits
    predicted = NAMES[int(logits[1].argmax())]
    assert f"<p>sample q-1, predicted &#x27;{predicted}&#x27;</p>" in page.read_text()

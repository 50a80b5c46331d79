"""The Conceptual Captions downloader, for real: img2dataset against a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import io
import threading

import numpy as np
import pytest
from PIL import Image
from webdataset.tariterators import tarfile_samples

from vilalign.data import DataFormatError
from vilalign.data.captions import CaptionShards, download_conceptual_captions

from .helpers import colour_of

SIZE = 24


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def log_message(self, *args):  # count requests instead of printing them
        self.hits.append(self.path)


@pytest.fixture
def server(tmp_path):
    """127.0.0.1 serving 20 good images, 1 HTML page named .jpg, 1 truncated JPEG."""
    site = tmp_path / "site"
    site.mkdir()
    for i in range(20):
        w, h = 30 + 3 * i, 50 - i  # assorted sizes and aspect ratios
        Image.new("RGB", (w, h), colour_of(f"good{i}")).save(site / f"good{i}.jpg", quality=95)
    (site / "page.jpg").write_text("<!doctype html><html><body>moved</body></html>")
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    (site / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    hits: list[str] = []
    handler = type("H", (_Handler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def write_tsv(path, base):
    rows = [(f"a photo number {i}", f"{base}/good{i}.jpg") for i in range(20)]
    rows[3] = ('"a photo" number 3', rows[3][1])  # a leading quote must survive as text
    rows += [(f"dead link {i}", f"{base}/missing{i}.jpg") for i in range(3)]
    rows += [("a web page", f"{base}/page.jpg"), ("a cut image", f"{base}/cut.jpg")]
    order = np.random.default_rng(1).permutation(len(rows))  # failures spread over shards
    path.write_text("".join(f"{rows[i][0]}\t{rows[i][1]}\n" for i in order))  # no header
    return path


def test_download_to_shards_and_resume(server, tmp_path, eval_transform):
    base, hits = server
    tsv = write_tsv(tmp_path / "cc.tsv", base)
    out = tmp_path / "shards"
    report = download_conceptual_captions(
        tsv, out, image_size=SIZE, threads=4, samples_per_shard=10, timeout=5
    )
    assert (report.successes, report.failed_to_download, report.failed_to_resize) == (20, 3, 2)
    assert len(report.shards) == 3
    samples = list(tarfile_samples({"url": str(p)} for p in report.shards))
    want = [f"a photo number {i}" for i in range(20)]
    want[3] = '"a photo" number 3'
    assert sorted(s["txt"].decode() for s in samples) == sorted(want)  # exactly the good ones
    for s in samples:
        caption = s["txt"].decode()
        image = Image.open(io.BytesIO(s["jpg"]))
        assert image.size == (SIZE, SIZE)
        colour = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
        want = colour_of(f"good{caption.rsplit(' ', 1)[1]}")
        assert np.abs(colour - np.array(want)).max() < 6, caption
    # the reader streams them as samples
    assert len(list(CaptionShards(str(out / "*.tar"), eval_transform))) == 20
    fetched = len(hits)
    assert fetched >= 25
    again = download_conceptual_captions(
        tsv, out, image_size=SIZE, threads=4, samples_per_shard=10, timeout=5
    )
    assert len(hits) == fetched  # nothing fetched again
    assert again.successes == 20 and again.failures == 5
    with pytest.raises(DataFormatError, match=r"another download.*image_size"):
        download_conceptual_captions(tsv, out, image_size=SIZE * 2, samples_per_shard=10)


@pytest.mark.slow
def test_interrupted_download_resumes_missing_shards_only(server, tmp_path):
    base, hits = server
    tsv = write_tsv(tmp_path / "cc.tsv", base)
    out = tmp_path / "shards"
    download_conceptual_captions(tsv, out, image_size=SIZE, threads=4, samples_per_shard=10)
    for name in ("00001.tar", "00001_stats.json", "00001.parquet"):  # as if killed mid-way
        (out / name).unlink()
    hits.clear()
    report = download_conceptual_captions(
        tsv, out, image_size=SIZE, threads=4, samples_per_shard=10
    )
    assert 10 <= len(hits) <= 12  # the ten rows of shard 1 (dead links may be retried)
    assert report.successes == 20 and len(report.shards) == 3


def test_malformed_tsv_line_named(tmp_path):
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("a cat\thttp://127.0.0.1:9/cat.jpg\njust a caption with no url\n")
    with pytest.raises(DataFormatError, match=r"cc\.tsv:2: expected 'caption<TAB>url'"):
        download_conceptual_captions(tsv, tmp_path / "out")

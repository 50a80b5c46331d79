"""Helpers for the data tests: colour-coded fixture images.

Every fixture image is a solid colour derived from a key (the sample id or its text), so a
test can check that a reader yields each image with *its* text, not a neighbour's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

IMG = 32  # encoder input size used by the fixture transform


def colour_of(key: str) -> tuple[int, int, int]:
    """A solid colour for ``key``; channels kept in 30..225 so JPEG noise stays small."""
    d = hashlib.sha256(key.encode()).digest()
    return tuple(30 + b % 196 for b in d[:3])  # type: ignore[return-value]


def write_image(path: Path, key: str, size: tuple[int, int] = (40, 48)) -> Path:
    """A solid-colour image (PNG or JPEG by suffix) whose colour encodes ``key``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour_of(key))
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def image_colour(image: torch.Tensor, data_config: dict[str, Any]) -> np.ndarray:
    """The mean RGB (0..255) of a normalised C×H×W tensor."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    return ((image * std + mean) * 255).mean(dim=(1, 2)).numpy()


def assert_matches(image: torch.Tensor, key: str, data_config: dict[str, Any]) -> None:
    got = image_colour(image, data_config)
    assert np.abs(got - np.array(colour_of(key))).max() < 6, (key, got, colour_of(key))


def write_jpeg_bytes(key: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour_of(key)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_flickr_karpathy(root: Path, images: int = 8, captions: int = 5) -> Path:
    """A Flickr30k Karpathy file whose test split has ``images`` images, ``captions`` each."""
    entries = []
    for i in range(images):
        write_image(root / "flickr30k-images" / f"{i}.jpg", f"img{i}")
        sents = [{"raw": f"picture {i} caption {j}", "imgid": i} for j in range(captions)]
        entries.append({"filename": f"{i}.jpg", "imgid": i, "split": "test", "sentences": sents})
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"dataset": "flickr30k", "images": entries})
    )
    return root

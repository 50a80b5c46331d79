"""Image preprocessing from the image encoder's own timm data config, plus augmentation.

Preprocessing is split in two so the expensive half can be cached:

* :meth:`ImageTransform.prepare` — decode-side, deterministic: timm's evaluation resize and
  centre crop (exactly ``timm.data.create_transform(**data_config)`` minus the
  normalisation) → a C×H×W uint8 array. This is what the image cache stores.
* :meth:`ImageTransform.finish` — per-sample, cheap: albumentations augmentation (training
  only) on that uint8 array, then scaling and normalisation with the encoder's mean/std →
  a C×H×W float tensor.

Augmentation therefore works on the centre-cropped image, not on the original file (the
price of caching; the random resized crop still varies scale and aspect ratio).

albumentations draws from generators of its own, which ``torch.manual_seed`` does not reach;
each augmented image is therefore seeded from torch's generator (the global one in the main
process, DataLoader's per-worker one in a worker), so a seeded run, and an exactly resumed
one, sees the same augmented images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from vilalign.data.config import AugmentConfig

# albumentations otherwise asks the internet for a newer version on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_TIMM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _timm_eval_resize(data_config: Mapping[str, Any]) -> Any:
    """timm's own eval pipeline ending in a uint8 C×H×W tensor (``use_prefetcher=True``)."""
    from timm.data import create_transform

    kwargs = {k: data_config[k] for k in _TIMM_KEYS if k in data_config}
    return create_transform(**kwargs, is_training=False, use_prefetcher=True)


def _albumentations(augment: AugmentConfig, size: tuple[int, int]) -> Any:
    """The training augmentation as an albumentations Compose (None when nothing is on)."""
    import albumentations as A

    ops: list[Any] = []
    if augment.crop_scale is not None:
        crop = A.RandomResizedCrop(size=size, scale=augment.crop_scale, ratio=augment.crop_ratio)
        ops.append(crop)
    if augment.hflip > 0:
        ops.append(A.HorizontalFlip(p=augment.hflip))
    if augment.color_jitter > 0:
        s = augment.color_jitter
        ops.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=0.8))
    return A.Compose(ops) if ops else None


class ImageTransform:
    """PIL image → normalised C×H×W tensor, with a cacheable uint8 middle stage.

    ``data_config`` is the dict of ``timm.data.resolve_data_config`` for the image encoder
    (the model exposes it as ``model.image_data_config``). ``train`` turns augmentation on
    (if ``augment.enabled``); evaluation transforms never augment.
    """

    def __init__(
        self,
        data_config: Mapping[str, Any],
        augment: AugmentConfig | None = None,
        train: bool = False,
    ) -> None:
        missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
        if missing:
            raise ValueError(f"image data config: missing keys {missing}")
        self.data_config = {k: data_config[k] for k in _TIMM_KEYS if k in data_config}
        self.size: tuple[int, int] = tuple(int(s) for s in data_config["input_size"][1:])  # type: ignore[assignment]
        self.train = train
        self._resize = _timm_eval_resize(self.data_config)
        use_aug = train and augment is not None and augment.enabled
        self._augment = _albumentations(augment, self.size) if use_aug else None  # type: ignore[arg-type]
        # normalise as x * scale + shift == (x / 255 - mean) / std
        mean = np.asarray(data_config["mean"], dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(data_config["std"], dtype=np.float32).reshape(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    @property
    def augments(self) -> bool:
        return self._augment is not None

    def cache_key(self) -> dict[str, Any]:
        """The settings that decide :meth:`prepare`'s output (mean/std do not)."""
        keys = ("input_size", "interpolation", "crop_pct", "crop_mode")
        return {k: _jsonable(self.data_config.get(k)) for k in keys}

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and centre-crop as timm evaluates: 3×H×W uint8 (the cached form)."""
        return np.asarray(self._resize(image.convert("RGB")))  # (3, H, W)

    def finish(self, chw: np.ndarray) -> torch.Tensor:
        """Augment (training) and normalise one 3×H×W uint8 array → 3×H×W float."""
        if self._augment is not None:
            self._augment.set_random_seed(int(torch.randint(2**31 - 1, ()).item()))
            hwc = self._augment(image=np.ascontiguousarray(chw.transpose(1, 2, 0)))["image"]
            chw = hwc.transpose(2, 0, 1)
        return self._normalise(np.ascontiguousarray(chw))

    def finish_batch(self, nchw: np.ndarray) -> torch.Tensor:
        """:meth:`finish` for N×3×H×W at once (vectorised when not augmenting)."""
        if self._augment is not None:
            return torch.stack([self.finish(a) for a in nchw])
        return self._normalise(np.ascontiguousarray(nchw))

    def _normalise(self, chw: np.ndarray) -> torch.Tensor:
        # numpy, on purpose: single-threaded. torch's OpenMP threads on a batch-sized op
        # stall when the cores are busy (a training step in the same process).
        out = np.multiply(chw, self._scale, dtype=np.float32)
        out += self._shift
        return torch.from_numpy(out)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.prepare(image))


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_transform(
    data_config: Mapping[str, Any], augment: AugmentConfig | None = None, train: bool = False
) -> ImageTransform:
    """The transform for one split: ``train=True`` for training splits, else evaluation."""
    return ImageTransform(data_config, augment, train=train)

"""Robust image loading: every failure names the file; under ``skip`` it is counted instead.

A file can be missing, empty, truncated or not an image at all (an HTML error page saved
with a ``.jpg`` name is common in scraped data). :func:`load_image` turns each case into a
:class:`BadImageError` naming the file and the reason; :class:`BadImageLog` records the
ones a dataset skipped so the count can be logged and stored with the run.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile, UnidentifiedImageError

logger = logging.getLogger(__name__)

# A truncated file must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

OnBadImage = Literal["error", "skip"]


class BadImageError(OSError):
    """An image file cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DataFormatError(ValueError):
    """A dataset file is malformed; the message names the file (and line or field)."""


def decode_image(data: bytes, name: str | Path) -> Image.Image:
    """Decode bytes into an RGB image, fully (so truncation is caught here, not later)."""
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: a truncated file fails now
            return img.convert("RGB")
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        hint = " (looks like HTML)" if head.startswith((b"<!doctype", b"<html")) else ""
        raise BadImageError(name, f"not an image{hint}") from None
    except Image.DecompressionBombError as err:  # absurd pixel counts: refuse, like PIL
        raise BadImageError(name, f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(name, f"cannot decode image: {err}") from None


def load_image(path: str | Path) -> Image.Image:
    """Read and decode an image file into RGB; raise :class:`BadImageError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except OSError as err:
        raise BadImageError(path, f"cannot read: {err}") from None
    return decode_image(data, path)


@dataclass
class BadImageLog:
    """The images a dataset skipped, with reasons; ``count`` is what a run stores."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, err: BadImageError) -> None:
        self.entries.append((err.path, err.reason))

    def report(self, what: str) -> None:
        """Log the count at the end of loading (a warning when anything was skipped)."""
        if not self.entries:
            logger.info("%s: no bad images", what)
            return
        first = "; ".join(f"{p}: {r}" for p, r in self.entries[:3])
        logger.warning("%s: skipped %d bad image(s), e.g. %s", what, self.count, first)


def handle_bad_image(err: BadImageError, policy: OnBadImage, log: BadImageLog) -> None:
    """Re-raise under ``error``; record under ``skip``."""
    if policy == "error":
        raise err
    log.add(err)

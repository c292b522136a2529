"""Opening images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finealign.errors import DataError


def open_rgb_image(path: str | Path) -> Any:
    """Decode one image as an RGB PIL image; a missing or unreadable file raises DataError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:  # a small file that would decode to gigabytes
        raise DataError(f"image {path} is a decompression bomb, not decoded: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def as_rgb_image(raw: Any) -> Any:
    """A PIL image from a path or an already-decoded image (what a dataset's loader hands over)."""
    if isinstance(raw, (str, Path)):
        return open_rgb_image(raw)
    if hasattr(raw, "convert"):
        return raw if getattr(raw, "mode", "RGB") == "RGB" else raw.convert("RGB")
    raise DataError(f"expected an image path or a PIL image, got {type(raw).__name__}")

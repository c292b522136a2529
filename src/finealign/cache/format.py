"""The on-disk layout of one feature cache entry (`<cache_dir>/<key>/`).

    visual_tokens.npy  (N, Lv, d) float16     text_tokens.npy  (M, Lt, d) float16
    visual_mask.npy    (N, Lv) bool           text_mask.npy    (M, Lt) bool
    visual_pooled.npy  (N, d) float16         text_pooled.npy  (M, d) float16
    caption_item.npy   (M,) int64             meta.json        {..., "complete": true}

Padding positions hold zeros. An entry is valid only when meta.json says "complete": true; it is
written last, inside a temporary folder that is then renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from finealign.errors import DataError

FORMAT_VERSION = 1
META_FILE = "meta.json"
MODALITIES = ("visual", "text")
PARTS = ("tokens", "mask", "pooled")
ARRAY_FILES = tuple(f"{m}_{p}.npy" for m in MODALITIES for p in PARTS) + ("caption_item.npy",)


def read_meta(entry: Path) -> dict[str, Any] | None:
    """meta.json of a cache entry, or None when it is missing or unreadable."""
    try:
        with open(Path(entry) / META_FILE, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(entry: Path) -> bool:
    meta = read_meta(entry)
    return bool(meta and meta.get("complete") is True and all((Path(entry) / f).is_file() for f in ARRAY_FILES))


def open_arrays(entry: Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Every array of a complete entry, keyed by file stem (memory-mapped by default)."""
    entry = Path(entry)
    if not is_complete(entry):
        raise DataError(f"feature cache {entry} is missing or incomplete (no complete meta.json)")
    return {f[:-4]: np.load(entry / f, mmap_mode="r" if mmap else None) for f in ARRAY_FILES}

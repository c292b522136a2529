"""The on-disk layout of one feature cache entry (`<cache_dir>/<key>/`).

    visual_tokens.npy  (N, Lv, d) float16     text_tokens.npy  (M, Lt, d) float16
    visual_mask.npy    (N, Lv) bool           text_mask.npy    (M, Lt) bool
    visual_pooled.npy  (N, d) float16         text_pooled.npy  (M, d) float16
    caption_item.npy   (M,) int64             meta.json        {..., "complete": true}

Padding positions hold zeros. An entry is valid only when meta.json says "complete": true; it is
written last, inside a temporary folder that is then renamed into place. meta.json's "arrays"
records each file's shape, dtype, byte size and SHA-256 (`verify_entry` recomputes them; loading
checks the cheap part — shapes, dtypes, sizes — every time). Entries written before checksums
existed have no "arrays" and verify as "unverifiable", never as fine.
"""

from __future__ import annotations

import hashlib
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


def array_record(path: Path) -> dict[str, Any]:
    """Shape, dtype, size and SHA-256 of one .npy file (what meta.json's "arrays" holds)."""
    arr = np.load(path, mmap_mode="r")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def quick_problems(entry: Path, meta: dict[str, Any]) -> list[str]:
    """What a cheap look finds wrong (sizes, shapes, dtypes against meta.json): run on every load."""
    problems = []
    for name, want in (meta.get("arrays") or {}).items():
        path = Path(entry) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        if path.stat().st_size != want["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, meta.json says {want['bytes']} (truncated?)")
            continue
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            problems.append(f"{path} cannot be read: {exc}")
            continue
        if list(arr.shape) != want["shape"] or str(arr.dtype) != want["dtype"]:
            problems.append(f"{path} is {arr.dtype}{list(arr.shape)}, meta.json says {want['dtype']}{want['shape']}")
    return problems


def verify_entry(entry: Path) -> tuple[str, list[str]]:
    """("ok" | "damaged" | "unverifiable", problems): the full check — every array against its
    recorded size, shape, dtype and SHA-256, and every stored token finite."""
    entry = Path(entry)
    meta = read_meta(entry)
    if not meta or meta.get("complete") is not True:
        return "damaged", [f"{entry / META_FILE} is missing, unreadable or not marked complete"]
    if not meta.get("arrays"):
        return "unverifiable", [f"{entry} was written before checksums were recorded: rebuild it to verify it"]
    problems = quick_problems(entry, meta)
    for name, want in meta["arrays"].items():
        path = entry / name
        if any(str(path) in p for p in problems):
            continue
        if array_record(path)["sha256"] != want["sha256"]:
            problems.append(f"{path}: SHA-256 differs from meta.json (the file changed after it was written)")
        elif name.endswith(("_tokens.npy", "_pooled.npy")):
            arr = np.load(path, mmap_mode="r")
            for start in range(0, len(arr), 4096):
                if not np.isfinite(arr[start : start + 4096]).all():
                    problems.append(f"{path} holds NaN or inf (rows from {start})")
                    break
    return ("damaged" if problems else "ok"), problems

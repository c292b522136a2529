"""The on-disk layout of one feature cache entry (`<cache_dir>/<key>/`).

    visual_tokens.npy  (N, Lv, d) float16     text_tokens.npy  (M, Lt, d) float16
    visual_mask.npy    (N, Lv) bool           text_mask.npy    (M, Lt) bool
    visual_pooled.npy  (N, d) float16         text_pooled.npy  (M, d) float16
    caption_item.npy   (M,) int64             meta.json        {..., "complete": true}

Padding positions hold zeros. An entry is valid only when meta.json says "complete": true; it is
written last, inside a temporary folder that is then renamed into place. meta.json's "arrays"
records each file's shape, dtype, byte size and SHA-256 (`verify_entry` recomputes them; loading
checks the cheap part — shapes, dtypes, sizes — every time). Entries written before checksums
existed have no "arrays" and verify as "unverifiable", never as fine. A file name read from
meta.json must stay inside the entry (finealign.safe_paths): a meta.json that lists /etc/passwd or
../other/file is damaged, and that file is never opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from finealign.errors import DataError
from finealign.safe_paths import escapes

FORMAT_VERSION = 1
META_FILE = "meta.json"
MODALITIES = ("visual", "text")
PARTS = ("tokens", "mask", "pooled")
ARRAY_FILES = tuple(f"{m}_{p}.npy" for m in MODALITIES for p in PARTS) + ("caption_item.npy",)
# the stored dtype of each array (by file stem)
DTYPES = {**{f"{m}_{p}": (np.bool_ if p == "mask" else np.float16) for m in MODALITIES for p in PARTS},
          "caption_item": np.int64}  # fmt: skip


def save_array(entry: Path, stem: str, array: np.ndarray) -> None:
    """One array of an entry, in its stored dtype."""
    np.save(Path(entry) / f"{stem}.npy", np.asarray(array, dtype=DTYPES[stem]))


def finish_entry(entry: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write meta.json once every array is on disk: each array's record (shape, dtype, size,
    SHA-256) and `"complete": true`, which makes the entry valid. Returns what was written."""
    entry = Path(entry)
    missing = [f for f in ARRAY_FILES if not (entry / f).is_file()]
    if missing:
        raise DataError(f"feature cache {entry} cannot be finished: {', '.join(missing)} not written")
    info = {
        **meta,
        "arrays": {name: array_record(entry / name) for name in ARRAY_FILES},  # verify_entry checks these
        "format": FORMAT_VERSION,
        "complete": True,  # last: a meta.json without it never counts as a cache
    }
    with open(entry / META_FILE, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, default=str)
    return info


def open_checked(entry: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(memory-mapped arrays by stem, meta) of a complete entry after the cheap checks (meta.json
    present and complete, recorded sizes/shapes/dtypes, row counts); DataError naming the problem."""
    entry = Path(entry)
    meta_path = entry / META_FILE
    if not meta_path.is_file():
        raise DataError(f"feature cache has no meta.json: {meta_path} (was the cache written?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt feature cache meta file {meta_path}: {exc}") from exc
    if meta.get("complete") is not True:
        raise DataError(f"feature cache {entry} is incomplete (meta.json complete != true); rebuild it")
    damaged = quick_problems(entry, meta, ARRAY_FILES if meta.get("arrays") else ())
    if damaged:
        raise DataError(f"feature cache {entry} is damaged: {'; '.join(damaged)} — delete it and rebuild")
    arrays = {f[:-4]: load_array(entry / f) for f in ARRAY_FILES}
    n, m = meta.get("num_items"), meta.get("num_captions")
    for stem, want in (("visual_tokens", n), ("text_tokens", m), ("caption_item", m)):
        if arrays[stem].shape[0] != want:
            raise DataError(f"{entry / (stem + '.npy')} has {arrays[stem].shape[0]} rows but meta.json says {want}")
    return arrays, meta


def load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"feature cache file missing: {path}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read feature cache file {path}: {exc}") from exc


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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content, read in chunks (files here reach tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def array_record(path: Path, *, checksum: bool = True) -> dict[str, Any]:
    """Shape, dtype, size and (unless `checksum=False`) SHA-256 of one .npy file: what meta.json's
    "arrays" holds and `quick_problems` checks."""
    arr = np.load(path, mmap_mode="r")
    record: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": Path(path).stat().st_size}
    if checksum:
        record["sha256"] = file_sha256(path)
    return record


def outside_names(entry: Path, meta: dict[str, Any], expected: tuple[str, ...] = ()) -> list[str]:
    """Problems of the file names meta.json's "arrays" records: a name that leaves the folder (never
    opened), a record that is no mapping, and — when `expected` is given — an expected file without
    a record (its size and checksum would go unchecked)."""
    arrays = meta.get("arrays") or {}
    if not isinstance(arrays, dict):
        return [f"{Path(entry)}: the metadata's 'arrays' is not a mapping of file records"]
    problems = [f"{Path(entry)}: the metadata names {name!r}, a file outside its folder (not opened)"
                for name in arrays if escapes(name) or Path(str(name)).name != name]  # fmt: skip
    problems += [f"{Path(entry)}: the metadata records nothing for {name}" for name in expected if name not in arrays]
    problems += [f"{Path(entry)}: the record of {name} is not a mapping of shape, dtype and bytes"
                 for name, want in arrays.items() if not isinstance(want, dict)]  # fmt: skip
    return problems


def quick_problems(entry: Path, meta: dict[str, Any], expected: tuple[str, ...] = ()) -> list[str]:
    """What a cheap look finds wrong (names inside the folder, sizes, shapes, dtypes against the
    metadata): run on every load. `expected`: the files that must have a record."""
    problems = outside_names(entry, meta, expected)
    if problems:
        return problems
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
    problems = quick_problems(entry, meta, ARRAY_FILES)
    if outside_names(entry, meta, ARRAY_FILES):
        return "damaged", problems
    for name, want in meta["arrays"].items():
        path = entry / name
        if any(str(path) in p for p in problems):
            continue
        if file_sha256(path) != want.get("sha256"):
            problems.append(f"{path}: SHA-256 differs from meta.json (the file changed after it was written)")
        elif name.endswith(("_tokens.npy", "_pooled.npy")):
            arr = np.load(path, mmap_mode="r")
            for start in range(0, len(arr), 4096):
                if not np.isfinite(arr[start : start + 4096]).all():
                    problems.append(f"{path} holds NaN or inf (rows from {start})")
                    break
    return ("damaged" if problems else "ok"), problems

"""A gallery's integrity: the feature cache's model (finealign.formats.feature_cache) for a gallery folder.

The manifest records every array's shape, dtype, byte size and SHA-256, and every index file's
size and SHA-256. Opening a gallery checks the cheap part (file names stay inside the folder,
sizes, shapes, dtypes, offsets that describe items of >= 1 token) and hashes the files no larger
than OPEN_HASH_BYTES (a small gallery is fully checked on every open; a large one by
`finealign search verify`, which hashes everything and checks that every stored vector is finite).
A manifest from before checksums verifies as "unverifiable", never as fine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from finealign.errors import DataError
from finealign.formats.feature_cache import file_sha256, quick_problems
from finealign.safe_paths import confined
from finealign.search.manifest import read_manifest
from finealign.search.store import OFFSETS_FILE, TOKENS_FILE

GLOBAL_FILE = "global.npy"
ARRAY_FILES = (GLOBAL_FILE, TOKENS_FILE, OFFSETS_FILE)
OPEN_HASH_BYTES = 512 << 20
ROWS = 65536  # rows per finiteness check: a memory map is read a slice at a time


def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of an index file (what the manifest's index record adds)."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def index_path(folder: Path, record: dict[str, Any], name: str) -> Path:
    """The file of index `name`, confined to the gallery folder (DataError otherwise)."""
    return confined(folder, record.get("file"), f"gallery {folder} manifest: index {name!r}")


def offsets_problems(offsets: np.ndarray, tokens_rows: int, count: int) -> list[str]:
    """Offsets that describe `count` items of >= 1 token each, packed into `tokens_rows` rows."""
    if offsets.ndim != 1 or len(offsets) != count + 1 or offsets.dtype.kind not in "iu":
        return [f"offsets.npy is {offsets.dtype}{list(offsets.shape)}, expected int64[{count + 1}]"]
    if len(offsets) and offsets[0] != 0:
        return [f"offsets.npy starts at {offsets[0]}, not 0"]
    steps = np.diff(offsets)
    if len(steps) and int(steps.min()) < 1:
        return [f"offsets.npy gives item {int(np.argmin(steps))} {int(steps.min())} tokens (each item has >= 1)"]
    if offsets[-1] != tokens_rows:
        return [f"offsets.npy ends at {offsets[-1]} but tokens.npy has {tokens_rows} rows"]
    return []


def _hash_problems(folder: Path, manifest: dict[str, Any], limit: float) -> list[str]:
    """SHA-256 of every recorded file no larger than `limit` bytes (arrays and index files)."""
    records = [(folder / name, want) for name, want in manifest["arrays"].items()]
    records += [(index_path(folder, r, name), r) for name, r in manifest["indexes"].items()]
    problems = []
    for path, want in records:
        if "sha256" in want and path.is_file() and path.stat().st_size <= limit:
            if file_sha256(path) != want["sha256"]:
                problems.append(f"{path}: SHA-256 differs from the manifest (the file changed after the build)")
    return problems


def gallery_problems(folder: Path, manifest: dict[str, Any], *, hash_limit: float = OPEN_HASH_BYTES) -> list[str]:
    """What opening finds wrong: names, sizes, shapes and dtypes of the arrays, index files (inside
    the folder, recorded size), the offsets, and the checksums of files up to `hash_limit` bytes."""
    folder = Path(folder)
    if not isinstance(manifest.get("indexes"), dict) or not isinstance(manifest.get("arrays"), dict):
        return [f"{folder} manifest has no 'arrays' / 'indexes' records"]
    problems = quick_problems(folder, manifest, ARRAY_FILES)
    for name, record in manifest["indexes"].items():
        try:
            path = index_path(folder, record, name)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{path} (index {name!r}) is missing")
        elif "bytes" in record and path.stat().st_size != record["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {record['bytes']}")
    if problems:
        return problems
    tokens = np.load(folder / TOKENS_FILE, mmap_mode="r")
    problems += offsets_problems(np.load(folder / OFFSETS_FILE), len(tokens), int(manifest.get("count", -1)))
    return problems or _hash_problems(folder, manifest, hash_limit)


def verify_gallery(folder: Path) -> tuple[str, list[str]]:
    """("ok" | "damaged" | "unverifiable", problems): every check of `gallery_problems`, every
    file hashed, and every stored global vector and token finite."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = gallery_problems(folder, manifest, hash_limit=float("inf"))
    if problems:
        return "damaged", problems
    for name in (GLOBAL_FILE, TOKENS_FILE):
        array = np.load(folder / name, mmap_mode="r")
        for start in range(0, len(array), ROWS):
            if not np.isfinite(array[start : start + ROWS]).all():
                problems.append(f"{folder / name} holds NaN or inf (rows from {start})")
                break
    if problems:
        return "damaged", problems
    unhashed = [n for n, r in manifest["arrays"].items() if "sha256" not in r]
    unhashed += [n for n, r in manifest["indexes"].items() if "sha256" not in r]
    if unhashed:
        return "unverifiable", [f"{folder} was built before checksums were recorded ({', '.join(unhashed)}): "
                                "rebuild it to verify it"]  # fmt: skip
    return "ok", []

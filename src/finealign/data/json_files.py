"""Reading annotation files with errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from finealign.errors import DataError
from finealign.formats.feature_cache import file_sha256


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} is not valid JSON: {exc}") from exc


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Name, size and SHA-256 of the content: a changed annotation file gives a different feature
    cache, while a fresh copy of the same file (new mtime, e.g. data re-synced) reuses it."""
    return {"name": Path(path).name, "size": os.stat(path).st_size, "sha256": file_sha256(path)}

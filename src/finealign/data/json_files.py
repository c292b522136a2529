"""Reading annotation files with errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from finealign.errors import DataError


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} is not valid JSON: {exc}") from exc


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Path, size and mtime: a changed annotation file gives a different feature cache."""
    stat = os.stat(path)
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

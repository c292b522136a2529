"""A gallery's manifest.json: written last (by rename, so a reader never sees half of one) and
read back only when marked complete. Used by the gallery (`search/gallery.py`) and its integrity
checks (`search/integrity.py`), which import it rather than each other."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from finealign.errors import DataError

MANIFEST_FILE = "manifest.json"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is missing or unreadable: not a finished gallery ({exc})") from exc
    if manifest.get("complete") is not True:
        raise DataError(f"{path} is not marked complete: the gallery build did not finish")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    # Written to a temporary file and renamed: a reader never sees half a manifest.
    tmp = Path(folder) / f".{MANIFEST_FILE}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, Path(folder) / MANIFEST_FILE)

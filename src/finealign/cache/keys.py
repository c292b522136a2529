"""Where feature caches live and how an entry's key is derived."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

ENV_CACHE = "FINEALIGN_CACHE"
# src/finealign/cache/keys.py → repository root (editable install).
_REPO_ROOT = Path(__file__).resolve().parents[3]


def default_cache_dir() -> Path:
    """`$FINEALIGN_CACHE/features`, else `<repo>/.cache/finealign/features` in a checkout (the
    editable install's own folder, whatever the working directory), else ~/.cache/finealign/features.
    FINEALIGN_CACHE is finealign's cache *root* everywhere (profiling keeps its files there too)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser() / "features"
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / ".cache" / "finealign" / "features"
    return Path.home() / ".cache" / "finealign" / "features"


def cache_key(identity: dict[str, Any]) -> str:
    """A short stable hash of everything the features depend on (JSON with sorted keys)."""
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]

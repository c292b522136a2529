"""Where a gallery's (or a query's) features come from: a feature cache entry or plain .npy arrays.

A gallery records a `feature_source` string; queries from another source live in another embedding
space, so `Gallery.query` refuses them (naming both). For a feature cache the source names the two
encoders and a digest of their identities (name, options, weights) — not the dataset or split, so
images of one split can query captions of another encoded by the same towers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from finealign.checks import check_choice
from finealign.errors import DataError, ShapeError
from finealign.formats.feature_cache import open_arrays, read_meta

MODALITIES = ("visual", "text")


def cache_feature_source(meta: dict[str, Any]) -> str:
    """`cache:<vision>+<text>:<digest>` — the encoder pair that made a feature cache entry."""
    try:
        towers = {side: {k: meta[side].get(k) for k in ("name", "options", "weights")} for side in ("vision", "text")}
    except (KeyError, AttributeError) as exc:
        raise DataError(f"feature cache meta.json does not name its encoders ({exc})") from exc
    digest = hashlib.sha256(json.dumps(towers, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"cache:{towers['vision']['name']}+{towers['text']['name']}:{digest}"


def cache_side(entry: Path, modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(tokens, mask, pooled, feature source) of one modality of a feature cache entry (memory-mapped)."""
    check_choice("modality", modality, MODALITIES)
    arrays = open_arrays(Path(entry))
    source = cache_feature_source(read_meta(Path(entry)) or {})
    return arrays[f"{modality}_tokens"], arrays[f"{modality}_mask"], arrays[f"{modality}_pooled"], source


def array_side(
    tokens: Path, mask: Path | None, pooled: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(tokens, mask, pooled) from .npy files; no mask file means every token is real."""
    try:
        tok = np.load(tokens, mmap_mode="r")
        msk = np.load(mask, mmap_mode="r") if mask is not None else np.ones(tok.shape[:2], dtype=bool)
        pool = np.load(pooled, mmap_mode="r") if pooled is not None else None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the feature arrays: {exc}") from exc
    if tok.ndim != 3:
        raise ShapeError(f"{tokens} must hold (N, L, d) tokens, got shape {tok.shape}")
    if msk.shape != tok.shape[:2] or msk.dtype != np.bool_:
        raise ShapeError(f"{mask} must hold an (N, L) = {tok.shape[:2]} bool mask, got {msk.dtype}{msk.shape}")
    return tok, msk, pool

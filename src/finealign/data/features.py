"""Precomputed features on disk: the feature-cache layout, and BUTD-style region files.

Cache layout (one directory per split; written by the encoders' feature cache or
`write_feature_cache`):

    visual_tokens.npy (N, Lv, dv) float16    visual_mask.npy (N, Lv) bool   visual_pooled.npy (N, dv) float16
    text_tokens.npy   (M, Lt, dt) float16    text_mask.npy   (M, Lt) bool   text_pooled.npy   (M, dt) float16
    caption_item.npy  (M,) int64             meta.json {"num_items": N, "num_captions": M, "complete": true, ...}

Arrays are memory-mapped, so a split larger than RAM is read item by item in DataLoader workers.

Region layout (`layout: regions`, e.g. BUTD 36×2048 Faster R-CNN features per image): a split
directory holds `regions.npy` (N, R, D) — or `regions.npz` with `features` (N, R, D) and an
optional bool `mask` (N, R) — plus `captions.json` {"captions": [str, ...], "caption_item": [int, ...]}.
The vision side then gets feature rows; the text side gets the raw caption strings for a text
encoder (e.g. a BiGRU or BERT).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finealign.checks import check_choice
from finealign.data.base import ConfiguredSplits, RetrievalSplit
from finealign.errors import ConfigError, DataError
from finealign.formats.feature_cache import finish_entry, load_array, open_checked, save_array
from finealign.registry import DATASETS


class FeatureRows(Sequence):
    """Lazy per-item view of (tokens, mask, pooled) arrays: row i is a dict of numpy arrays.

    This is what the `precomputed` and `staged` encoders' `load` receive for one image or caption.
    `keep` (optional, a subset of `mask`) names the positions the aligners see, e.g. the words of a
    caption (data.words): a row's "mask" is then `keep`, its "attention_mask" the real positions
    (what a backbone tail attends over), and with `pool_kept` its "pooled" is the mean of the kept
    tokens instead of the stored vector.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        pooled: np.ndarray | None = None,
        keep: np.ndarray | None = None,
        pool_kept: bool = False,
    ):
        if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
            raise DataError(f"feature rows: tokens {tokens.shape} and mask {mask.shape} do not match")
        if pooled is not None and pooled.shape != (tokens.shape[0], tokens.shape[2]):
            raise DataError(f"feature rows: pooled {pooled.shape} does not match tokens {tokens.shape}")
        if keep is not None and keep.shape != mask.shape:
            raise DataError(f"feature rows: keep {keep.shape} does not match mask {mask.shape}")
        self.tokens, self.mask, self.pooled, self.keep, self.pool_kept = tokens, mask, pooled, keep, pool_kept

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def take(self, rows: slice | np.ndarray) -> FeatureRows:
        """These rows (a slice stays a memory-mapped view; an index array is read into memory)."""
        pick = (lambda a: a[rows]) if isinstance(rows, slice) else (lambda a: np.asarray(a[rows]))  # noqa: E731
        return FeatureRows(
            pick(self.tokens), pick(self.mask), None if self.pooled is None else pick(self.pooled),
            None if self.keep is None else pick(self.keep), self.pool_kept,
        )  # fmt: skip

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        pooled = None if self.pooled is None else self.pooled[i]
        if self.keep is None:
            return {"tokens": self.tokens[i], "mask": self.mask[i], "pooled": pooled}
        kept = self.keep[i]
        if self.pool_kept:
            pooled = np.asarray(self.tokens[i][kept], dtype=np.float32).mean(0)
        return {"tokens": self.tokens[i], "mask": kept, "pooled": pooled, "attention_mask": self.mask[i]}


def load_feature_cache(directory: str | Path, name: str | None = None) -> RetrievalSplit:
    """Open one split's feature cache (memory-mapped); DataError naming the path if it is missing,
    incomplete (meta.json "complete" not true) or inconsistent. The layout is finealign.formats.feature_cache's."""
    directory = Path(directory)
    arrays, meta = open_checked(directory)
    n: int = meta["num_items"]  # open_checked matched it to the row count
    caption_item = torch.from_numpy(np.array(arrays["caption_item"], dtype=np.int64))  # a copy: small
    if len(caption_item) and (int(caption_item.min()) < 0 or int(caption_item.max()) >= n):
        raise DataError(f"{directory / 'caption_item.npy'} holds item indices outside [0, {n})")
    try:
        items = FeatureRows(arrays["visual_tokens"], arrays["visual_mask"], arrays["visual_pooled"])
        captions = FeatureRows(arrays["text_tokens"], arrays["text_mask"], arrays["text_pooled"])
    except DataError as exc:
        raise DataError(f"feature cache {directory}: {exc}") from exc
    return RetrievalSplit(
        name=name or directory.name,
        items=items,
        captions=captions,
        caption_item=caption_item,
        meta={**meta, "vision_dim": items.dim, "text_dim": captions.dim, "path": str(directory)},
    )


def write_feature_cache(
    directory: str | Path,
    *,
    visual_tokens: np.ndarray,
    visual_mask: np.ndarray,
    visual_pooled: np.ndarray,
    text_tokens: np.ndarray,
    text_mask: np.ndarray,
    text_pooled: np.ndarray,
    caption_item: np.ndarray,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write one split in the cache layout (finealign.formats.feature_cache: the same files, dtypes and
    checksummed meta.json as a built cache entry); meta.json last, marked complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "visual_tokens": visual_tokens, "visual_mask": visual_mask, "visual_pooled": visual_pooled,
        "text_tokens": text_tokens, "text_mask": text_mask, "text_pooled": text_pooled, "caption_item": caption_item,
    }  # fmt: skip
    for stem, array in arrays.items():
        save_array(directory, stem, array)
    finish_entry(
        directory, {**(meta or {}), "num_items": int(len(visual_tokens)), "num_captions": int(len(text_tokens))}
    )
    return directory


def load_region_split(directory: str | Path, name: str | None = None) -> RetrievalSplit:
    """Open a `regions` layout split: region feature rows for images, caption strings for text."""
    directory = Path(directory)
    npy, npz = directory / "regions.npy", directory / "regions.npz"
    if npy.is_file():
        features, mask = load_array(npy), None
    elif npz.is_file():
        with np.load(npz) as archive:
            if "features" not in archive:
                raise DataError(f"{npz} has no 'features' array (found {list(archive.keys())})")
            features = archive["features"]
            mask = archive["mask"].astype(bool) if "mask" in archive else None
    else:
        raise DataError(f"region features missing: neither {npy} nor {npz} exists")
    if features.ndim != 3:
        raise DataError(f"region features in {directory} must be (N, R, D), got shape {features.shape}")
    if mask is None:
        mask = np.ones(features.shape[:2], dtype=bool)
    captions_path = directory / "captions.json"
    if not captions_path.is_file():
        raise DataError(f"captions file missing: {captions_path}")
    try:
        captions = json.loads(captions_path.read_text())
        texts, owner = list(captions["captions"]), list(captions["caption_item"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{captions_path} must hold {{'captions': [...], 'caption_item': [...]}}: {exc}") from exc
    if len(texts) != len(owner):
        raise DataError(f"{captions_path}: {len(texts)} captions but {len(owner)} caption_item entries")
    caption_item = torch.tensor(owner, dtype=torch.long)
    if len(owner) and (int(caption_item.min()) < 0 or int(caption_item.max()) >= features.shape[0]):
        raise DataError(f"{captions_path}: caption_item outside [0, {features.shape[0]})")
    items = FeatureRows(features, mask, None)
    return RetrievalSplit(
        name=name or directory.name,
        items=items,
        captions=texts,
        caption_item=caption_item,
        meta={"vision_dim": items.dim, "path": str(directory), "layout": "regions"},
    )


LAYOUTS = {"cache": load_feature_cache, "regions": load_region_split}


@dataclass
class FeaturesConfig:
    root: str | None = None  # directory holding one sub-directory per split
    layout: str = "cache"  # cache | regions (see module docstring)
    # split name → directory: relative to root, or absolute (e.g. a `finealign cache` entry)
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})

    def __post_init__(self) -> None:
        if self.root is not None and not isinstance(self.root, str):
            raise ConfigError(f"root must be a directory path or null, got {self.root!r}")
        check_choice("layout", self.layout, sorted(LAYOUTS))
        if not isinstance(self.splits, dict) or not self.splits:
            raise ConfigError(f"splits must map split names to directories, got {self.splits!r}")
        for split, path in self.splits.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"splits.{split} must be a directory path, got {path!r}")
            if not self.root and not Path(path).is_absolute():
                raise ConfigError(
                    f"splits.{split}={path!r} is relative but root is not set "
                    "(set data.root=/path/to/features or give absolute split directories)"
                )


@DATASETS.register("features")
class FeatureDataset(ConfiguredSplits[FeaturesConfig]):
    """Precomputed features (feature cache or region files), memory-mapped, one directory per split."""

    Config = FeaturesConfig

    def __init__(self, config: FeaturesConfig | None = None):
        self.config = config if config is not None else FeaturesConfig()

    def split(self, name: str) -> RetrievalSplit:
        self.require_split(name)
        directory = Path(self.config.splits[name]).expanduser()
        if not directory.is_absolute():
            directory = Path(self.config.root or "").expanduser() / directory
        return LAYOUTS[self.config.layout](directory, name)

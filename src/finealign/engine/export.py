"""A trained model's features of one dataset split, as arrays a stored gallery takes: what lets
`finealign search` rank with the same towers (and aligner) that `finealign eval` scores with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from finealign.cache.encode import encode_items, pad_stack
from finealign.checks import check_choice
from finealign.data.base import RetrievalSplit
from finealign.engine.model import RetrievalModel
from finealign.errors import ConfigError
from finealign.formats.feature_cache import file_sha256

MODALITIES = ("visual", "text")


def checkpoint_feature_source(ckpt: str | Path) -> str:
    """`ckpt:<file name>:<sha256 prefix>`: queries must come from the very same weights."""
    return f"ckpt:{Path(ckpt).name}:{file_sha256(ckpt)[:12]}"


def split_features(
    model: RetrievalModel,
    split: RetrievalSplit,
    modality: str,
    *,
    only: Sequence[int] | None = None,
    batch_size: int = 64,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (N, L, d) float16, mask (N, L) bool, pooled (N, d) float16) of every image
    (`visual`) or caption (`text`) of `split` — or of the `only` ones, in that order — encoded by
    the model's own (trained) tower."""
    check_choice("modality", modality, MODALITIES)
    encoder = model.vision if modality == "visual" else model.text
    total = split.num_items if modality == "visual" else split.num_captions
    read_all = split.raw_item if modality == "visual" else split.captions.__getitem__
    picked = list(range(total)) if only is None else [int(i) for i in only]
    if any(not 0 <= i < total for i in picked):
        raise ConfigError(f"ids must lie in [0, {total}) ({split.name} {modality} items), got {picked}")
    tokens, masks, pooled = encode_items(encoder, len(picked), lambda i: read_all(picked[i]), batch_size=batch_size,
                                         device=device, desc=modality)  # fmt: skip
    length = max(t.shape[1] for t in tokens)
    out_tokens = np.zeros((len(picked), length, tokens[0].shape[2]), dtype=np.float16)
    out_mask = np.zeros((len(picked), length), dtype=bool)
    pad_stack(tokens, length, out_tokens)
    pad_stack(masks, length, out_mask)
    return out_tokens, out_mask, pooled

"""A packed float16 token store on disk, memory-mapped and read item by item.

    tokens.npy   (T, d) float16   every item's real tokens, item after item (no padding stored)
    offsets.npy  (N + 1,) int64   item i owns rows offsets[i] : offsets[i + 1]

Variable-length items pack without padding; `read(ids)` copies only the listed items' rows out of
the memory map and pads them into a TokenBatch, so a query touches a few pages of a store that may
be far larger than memory. Before copying, it asks the kernel to read every listed item's byte
range (POSIX_FADV_WILLNEED, where the OS has it): page faults alone fetch one item after another,
the advice lets the disk serve them all at once (benchmarks/gallery_scale.py measures both).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from finealign.errors import DataError, ShapeError
from finealign.resources import preallocate
from finealign.tokens import TokenBatch

TOKENS_FILE = "tokens.npy"
OFFSETS_FILE = "offsets.npy"


class TokenStoreWriter:
    """Fills a store of known size (`count` items, `total_tokens` real tokens) chunk by chunk."""

    def __init__(self, folder: Path, count: int, total_tokens: int, dim: int):
        self.folder = Path(folder)
        self.tokens = np.lib.format.open_memmap(self.folder / TOKENS_FILE, "w+", np.float16, (total_tokens, dim))
        preallocate(self.folder / TOKENS_FILE)  # a full disk: ENOSPC now, not SIGBUS at a write through the map
        self.offsets = np.zeros(count + 1, dtype=np.int64)
        self.items = 0

    def add(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        """Append items: (n, L, d) tokens with their (n, L) bool mask (only real tokens are stored)."""
        if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
            raise ShapeError(f"tokens must be (n, L, d) with an (n, L) mask, got {tokens.shape} and {mask.shape}")
        if tokens.shape[2] != self.tokens.shape[1]:
            raise ShapeError(f"tokens have d={tokens.shape[2]}, the store was opened for d={self.tokens.shape[1]}")
        n = len(tokens)
        if self.items + n > len(self.offsets) - 1:
            raise ShapeError(
                f"store was opened for {len(self.offsets) - 1} items; adding {n} to {self.items} overflows it"
            )
        lengths = mask.sum(1)
        start = self.offsets[self.items]
        self.offsets[self.items + 1 : self.items + n + 1] = start + np.cumsum(lengths)
        end = self.offsets[self.items + n]
        if end > len(self.tokens):
            raise ShapeError(f"store was opened for {len(self.tokens)} tokens; these items need {end}")
        self.tokens[start:end] = tokens[mask]
        self.items += n

    def close(self) -> None:
        """Flush the tokens and write the offsets; every announced item and token must be there."""
        if self.items != len(self.offsets) - 1 or self.offsets[-1] != len(self.tokens):
            raise ShapeError(
                f"store holds {self.items} items / {self.offsets[self.items]} tokens, "
                f"opened for {len(self.offsets) - 1} / {len(self.tokens)}"
            )
        self.tokens.flush()
        del self.tokens
        np.save(self.folder / OFFSETS_FILE, self.offsets)


class TokenStore:
    """Read side: the memory-mapped tokens (never loaded whole) and the item offsets."""

    def __init__(self, folder: Path, prefetch: bool = True):
        folder = Path(folder)
        try:
            self.tokens = np.load(folder / TOKENS_FILE, mmap_mode="r")
            self.offsets = np.load(folder / OFFSETS_FILE)
        except (OSError, ValueError) as exc:
            raise DataError(f"token store {folder} cannot be read: {exc}") from exc
        self.prefetch = prefetch and hasattr(os, "posix_fadvise")
        self._file = open(folder / TOKENS_FILE, "rb") if self.prefetch else None  # noqa: SIM115 (lives with the store)
        if self.offsets[-1] != len(self.tokens):
            raise DataError(
                f"token store {folder}: offsets end at {self.offsets[-1]}, tokens.npy has {len(self.tokens)} rows"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.tokens.shape[1]

    def lengths(self, ids: np.ndarray) -> np.ndarray:
        return self.offsets[ids + 1] - self.offsets[ids]

    def read(self, ids: np.ndarray, dtype: torch.dtype = torch.float32) -> TokenBatch:
        """The items `ids` (in that order, repeats allowed) as a padded TokenBatch: only their rows are read."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= len(self))):
            raise ShapeError(f"item ids must be a 1-D array within [0, {len(self)}), got {ids!r}")
        lengths = self.lengths(ids)
        width = int(lengths.max()) if len(ids) else 0
        mask = np.arange(width)[None, :] < lengths[:, None]
        # The rows of every listed item, in order: one fancy index into the memory map.
        if self.prefetch:
            self._advise_will_need(ids, lengths)
        rows = np.repeat(self.offsets[ids] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        padded = np.zeros((len(ids), width, self.dim), dtype=np.float16)
        padded[mask] = self.tokens[rows]
        return TokenBatch(torch.from_numpy(padded).to(dtype), torch.from_numpy(mask))

    def _advise_will_need(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        row_bytes = self.tokens.shape[1] * self.tokens.itemsize
        starts = self.tokens.offset + self.offsets[ids] * row_bytes
        if self._file is None:  # closed: nothing to advise
            return
        fd = self._file.fileno()
        for start, size in zip(starts.tolist(), (lengths * row_bytes).tolist(), strict=True):
            os.posix_fadvise(fd, start, size, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

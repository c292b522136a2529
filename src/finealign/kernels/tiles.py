"""Tile shapes for the Triton kernels (plain Python, so it imports without Triton)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Tiles:
    """One program scores `items_visual` images × `items_text` captions; every item's tokens
    are padded to a power of two (Triton tiles are powers of two), so a tile holds whole pairs
    and all pooling happens on chip (or, `packed`, the images' regions share one padded block)."""

    items_visual: int
    items_text: int
    block_k: int
    num_warps: int
    num_stages: int
    group: int = 8  # visual blocks per launch group, so concurrent programs share text tiles in L2
    # Forward only: pack the images' regions back to back (next_pow2(items_visual · Lv) columns)
    # instead of padding each image to a power of two (50 regions → 64). Less MMA work on padding,
    # more epilogue work (one masked reduction per image); the backward always uses padded tiles.
    packed: bool = False

    @classmethod
    def default(cls, lv: int, lt: int, dtype: torch.dtype, rows: int = 128, cols: int = 128) -> "Tiles":
        lvp, ltp = next_pow2(lv), next_pow2(lt)
        bv, bt = max(1, rows // lvp), max(1, cols // ltp)
        block_k = 32 if dtype == torch.float32 else 64
        warps = 8 if bv * lvp * bt * ltp >= 128 * 128 else 4
        return cls(bv, bt, block_k, warps, 3)

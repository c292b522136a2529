"""Tile shapes for the Triton kernels (plain Python, so it imports without Triton), and their
int-list form for the custom ops' schemas (`tile_list` / `tiles_from_list`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finealign.errors import ConfigError


def _pow2(n) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


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

    def __post_init__(self) -> None:
        # Triton block shapes are powers of two: a tile of items_visual · next_pow2(Lv) rows needs a
        # power-of-two item count, except packed, where the columns are padded as one block.
        checks = {
            "items_visual": self.packed or _pow2(self.items_visual),
            "items_text": _pow2(self.items_text),
            "block_k": _pow2(self.block_k) and self.block_k >= 16,
            "num_warps": _pow2(self.num_warps) and self.num_warps <= 32,
            "num_stages": self.num_stages >= 1,
            "group": self.group >= 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or not ok:
                raise ConfigError(
                    f"Tiles.{name} = {value!r} is not allowed (items_text, block_k >= 16, num_warps <= 32 and, "
                    "unless packed, items_visual must be powers of two; num_stages and group positive ints)"
                )
        if not isinstance(self.packed, bool):
            raise ConfigError(f"Tiles.packed must be a bool, got {self.packed!r}")

    @classmethod
    def default(cls, lv: int, lt: int, dtype: torch.dtype, rows: int = 128, cols: int = 128) -> Tiles:
        lvp, ltp = next_pow2(lv), next_pow2(lt)
        bv, bt = max(1, rows // lvp), max(1, cols // ltp)
        block_k = 32 if dtype == torch.float32 else 64
        warps = 8 if bv * lvp * bt * ltp >= 128 * 128 else 4
        return cls(bv, bt, block_k, warps, 3)


def tile_list(tiles: Tiles | None) -> list[int]:
    """Tiles as the op's int list ([] = the default tiles for the inputs)."""
    if tiles is None:
        return []
    return [
        tiles.items_visual,
        tiles.items_text,
        tiles.block_k,
        tiles.num_warps,
        tiles.num_stages,
        tiles.group,
        int(tiles.packed),
    ]


def tiles_from_list(values: list[int], v: torch.Tensor, t: torch.Tensor) -> Tiles:
    """The Tiles back from `tile_list`'s int list (the default tiles for v, t when empty)."""
    if not values:
        return Tiles.default(v.shape[1], t.shape[1], v.dtype)
    items_visual, items_text, block_k, num_warps, num_stages, group, packed = values  # tile_list's order
    return Tiles(items_visual, items_text, block_k, num_warps, num_stages, group, packed=bool(packed))

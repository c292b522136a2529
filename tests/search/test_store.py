"""The packed float16 token store: exact round trip, and reads that touch only the asked rows."""

from pathlib import Path

import numpy as np
import pytest

from finealign.errors import ShapeError
from finealign.search.store import TOKENS_FILE, TokenStore, TokenStoreWriter


def write_store(folder: Path, n: int, length: int, dim: int, seed: int = 0, chunk: int = 7):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, length, dim)).astype(np.float16)
    mask = np.arange(length)[None] < rng.integers(1, length + 1, n)[:, None]
    mask = np.take_along_axis(mask, rng.permuted(np.tile(np.arange(length), (n, 1)), axis=1), 1)  # padding anywhere
    tokens[~mask] = 1000.0  # padding must never be stored
    writer = TokenStoreWriter(folder, n, int(mask.sum()), dim)
    for start in range(0, n, chunk):
        writer.add(tokens[start : start + chunk], mask[start : start + chunk])
    writer.close()
    return tokens, mask


@pytest.mark.parametrize("prefetch", [True, False])
def test_read_gives_each_items_real_tokens_in_order(tmp_path, prefetch):
    tokens, mask = write_store(tmp_path, 40, 9, 6)
    store = TokenStore(tmp_path, prefetch=prefetch)
    ids = np.array([5, 0, 39, 5, 17])  # any order, repeats allowed
    batch = store.read(ids)
    for row, i in enumerate(ids):
        real = tokens[i][mask[i]]
        assert batch.mask[row].sum() == len(real)
        np.testing.assert_array_equal(batch.tokens[row, : len(real)].numpy(), real.astype(np.float32))
        assert not batch.mask[row, len(real) :].any() and (batch.tokens[row, len(real) :] == 0).all()
    assert store.tokens.shape == (mask.sum(), 6)  # packed: no padding stored


def mapping_rss_kb(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_reading_k_items_maps_only_their_pages(tmp_path):
    write_store(tmp_path, 1500, 32, 256, chunk=500)  # 1500 × ≤32 × 256 fp16: ~12 MB of tokens
    store = TokenStore(tmp_path)
    path = (tmp_path / TOKENS_FILE).resolve()
    file_kb = path.stat().st_size // 1024
    assert isinstance(store.tokens, np.memmap)
    assert mapping_rss_kb(path) <= 64  # opening reads only the header page(s)
    store.read(np.array([3, 700, 1499, 42, 1100]))
    resident = mapping_rss_kb(path)
    # Five items of ≤16 KiB each, plus the kernel's fault-around (64 KiB per fault): far below the file.
    assert 0 < resident <= 5 * (16 + 2 * 64)
    assert resident < file_kb / 10


def test_writer_rejects_wrong_dimension_and_overflow(tmp_path):
    writer = TokenStoreWriter(tmp_path, 2, 4, 3)
    with pytest.raises(ShapeError, match="d=5.*d=3"):
        writer.add(np.zeros((1, 2, 5), np.float16), np.ones((1, 2), bool))
    writer.add(np.zeros((2, 2, 3), np.float16), np.ones((2, 2), bool))
    with pytest.raises(ShapeError, match="overflows"):
        writer.add(np.zeros((1, 2, 3), np.float16), np.ones((1, 2), bool))


def test_writer_refuses_to_close_short(tmp_path):
    writer = TokenStoreWriter(tmp_path, 3, 6, 3)
    writer.add(np.zeros((2, 2, 3), np.float16), np.ones((2, 2), bool))
    with pytest.raises(ShapeError, match="holds 2 items"):
        writer.close()

"""Run one frozen encoder over a list of raw items, in batches, into padded float16 arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from finealign.devices import to_device
from finealign.encoders.base import Encoder
from finealign.errors import ShapeError
from finealign.progress import bar as progress_bar


class _LoadedItems(Dataset):
    """Item i = encoder.load(read(i)): decoding happens in DataLoader workers when there are any."""

    def __init__(self, count: int, read: Callable[[int], Any], encoder: Encoder):
        self.count, self.read, self.encoder = count, read, encoder

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        return self.encoder.load(self.read(i))


def pad_stack(chunks: Sequence[np.ndarray], length: int, out: np.ndarray) -> None:
    """Copy (B, L_b, ...) chunks into `out` (N, length, ...), leaving the padding as zeros."""
    row = 0
    for chunk in chunks:
        out[row : row + len(chunk), : chunk.shape[1]] = chunk
        row += len(chunk)


def encode_items(
    encoder: Encoder,
    count: int,
    read: Callable[[int], Any],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str = "encoding",
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per-batch float16 tokens and bool masks (each batch as long as its longest item) + pooled."""
    loader = DataLoader(
        _LoadedItems(count, read, encoder),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=encoder.collate,
    )
    encoder.eval().to(device)
    tokens, masks, pooled = [], [], []
    with torch.inference_mode(), progress_bar(total=count, desc=desc, unit="item") as bar:
        for batch in loader:
            out = encoder(to_device(batch, device)).with_pooled()
            if out.tokens.ndim != 3 or out.mask.shape != out.tokens.shape[:2]:
                raise ShapeError(f"{desc}: encoder gave tokens {tuple(out.tokens.shape)}, mask {tuple(out.mask.shape)}")
            # Zero the padding so the file holds no stale values there.
            t = out.tokens.float().masked_fill(~out.mask.unsqueeze(-1), 0.0)
            tokens.append(t.half().cpu().numpy())
            masks.append(out.mask.cpu().numpy().astype(bool))
            pooled.append(out.pooled.float().half().cpu().numpy())
            bar.update(len(t))
    return tokens, masks, np.concatenate(pooled)

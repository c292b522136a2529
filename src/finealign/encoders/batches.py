"""The one loop that runs an encoder over raw items: load → collate → forward, in batches.

Evaluation (`engine.evaluate.encode_all`: fp32 TokenBatches for scoring) and the feature cache
(`cache.encode.encode_items`: padded float16 arrays on disk) both consume `encoded_batches`; they
differ only in what they keep of each batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from finealign.devices import to_device
from finealign.errors import ShapeError
from finealign.progress import bar as progress_bar
from finealign.tokens import TokenBatch


def autocast_context(device: torch.device, amp: str) -> Any:
    """bf16/fp16 autocast on `device` (`amp`: none | bf16 | fp16)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _LoadedItems(Dataset):
    """Item i = encoder.load(read(i)): decoding happens in DataLoader workers when there are any."""

    def __init__(self, count: int, read: Callable[[int], Any], encoder: Any):
        self.count, self.read, self.encoder = count, read, encoder

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        return self.encoder.load(self.read(i))


@torch.no_grad()
def encoded_batches(
    encoder: Any,
    count: int,
    read: Callable[[int], Any],
    *,
    batch_size: int,
    device: torch.device,
    amp: str = "none",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "encode",
) -> Iterator[TokenBatch]:
    """The encoder's TokenBatch for items 0..count-1 (read(i) gives raw item i), batch by batch, in
    order. The encoder's train/eval mode is the caller's; a malformed output is a ShapeError."""
    loader = DataLoader(_LoadedItems(count, read, encoder), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=encoder.collate)  # fmt: skip
    with progress_bar(total=count, progress=progress, desc=desc, unit="item", leave=False) as bar:
        for inputs in loader:
            with autocast_context(device, amp):
                out = encoder(to_device(inputs, device))
            if out.tokens.ndim != 3 or out.mask.shape != out.tokens.shape[:2]:
                raise ShapeError(f"{desc}: encoder gave tokens {tuple(out.tokens.shape)}, mask {tuple(out.mask.shape)}")
            bar.update(len(out.tokens))
            yield out

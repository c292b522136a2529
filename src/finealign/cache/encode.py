"""Run one frozen encoder over a list of raw items (the shared loop, encoders.batches) into padded
float16 arrays."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from finealign.encoders.base import Encoder
from finealign.encoders.batches import encoded_batches

log = logging.getLogger(__name__)


def pad_stack(chunks: Sequence[np.ndarray], length: int, out: np.ndarray) -> None:
    """Copy (B, L_b, ...) chunks into `out` (N, length, ...), leaving the padding as zeros."""
    row = 0
    for chunk in chunks:
        out[row : row + len(chunk), : chunk.shape[1]] = chunk
        row += len(chunk)


#: Seconds between two log lines of encoding progress.
LOG_EVERY_S = 30.0


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
    """Per-batch float16 tokens and bool masks (each batch as long as its longest item) + pooled.

    Besides the progress bar (on a terminal), a log line says how far encoding got at most every
    `LOG_EVERY_S` seconds and when it is done, so a log file shows the build advance."""
    encoder.eval().to(device)
    tokens, masks, pooled = [], [], []
    start = last = time.perf_counter()
    done = 0
    for out in encoded_batches(encoder, count, read, batch_size=batch_size, device=device, num_workers=num_workers,
                               progress=True, desc=desc):  # fmt: skip
        done += len(out)
        now = time.perf_counter()
        if now - last >= LOG_EVERY_S or done == count:
            last = now
            rate = done / max(now - start, 1e-9)
            log.info("%s: %d/%d encoded (%.0f%%) in %.0f s, %.1f items/s, about %.0f s left", desc, done, count,
                     100.0 * done / max(count, 1), now - start, rate, (count - done) / max(rate, 1e-9))  # fmt: skip
        out = out.with_pooled()
        assert out.pooled is not None  # with_pooled fills it
        # Zero the padding so the file holds no stale values there.
        t = out.tokens.float().masked_fill(~out.mask.unsqueeze(-1), 0.0)
        tokens.append(t.half().cpu().numpy())
        masks.append(out.mask.cpu().numpy().astype(bool))
        pooled.append(out.pooled.float().half().cpu().numpy())
    return tokens, masks, np.concatenate(pooled)

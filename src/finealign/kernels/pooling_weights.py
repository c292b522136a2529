"""Mean pooling is weighted pooling with weights 1/n on the real tokens: one code path for both."""

from __future__ import annotations

import torch
from torch import Tensor


def mean_weights(mask: Tensor) -> Tensor:
    """(N, L) float32: 1/n on each item's n real tokens, 0 on padding."""
    m = mask.to(torch.float32)
    return m / m.sum(1, keepdim=True).clamp_min(1.0)

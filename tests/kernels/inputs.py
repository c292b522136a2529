"""Random masked token sets for the kernel tests: unit-norm real tokens (as Aligner.prepare gives
the kernels), large finite values on padding, so any leak of padding changes the result."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.conftest import random_batch


def tokens(n: int, length: int, dim: int, gen: torch.Generator, dtype=torch.float32, min_len: int = 1):
    batch = random_batch(n, length, dim, generator=gen, dtype=torch.float64, min_len=min_len)
    real = F.normalize(batch.tokens, dim=-1)
    x = torch.where(batch.mask[..., None], real, batch.tokens)
    return x.to(dtype), batch.mask


def one_real_token(n: int, length: int, dim: int, gen: torch.Generator):
    """Items with a single real token each, at a random position (all but one padded)."""
    x, _ = tokens(n, length, dim, gen, min_len=length)
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[torch.arange(n), torch.randint(0, length, (n,), generator=gen)] = True
    return x, mask


def token_weights(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Positive per-token weights on real tokens (0 on padding), like WTI's softmax."""
    w = torch.rand(mask.shape, generator=gen, dtype=torch.float64) * mask
    return w / w.sum(1, keepdim=True)


def pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of each item's real tokens: global vectors like an encoder's (a padded token
    would hold the inputs' large padding values and make the importance softmax needlessly peaky)."""
    m = mask[..., None].to(x.dtype)
    return F.normalize((x * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

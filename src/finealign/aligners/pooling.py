"""Masked reductions shared by several aligners: softmax over real tokens and word pooling.

All of them compute in at least fp32 (half-precision inputs are upcast) and ignore masked
entries exactly, whatever value those hold (including -inf).
"""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.errors import ConfigError

#: "lse" is SCAN's scaled form τ·log Σ exp(x/τ); "lse_chan" is CHAN's `LSEPooling`, log Σ exp(x/β)
#: with no β factor (1/β times "lse": it changes what a triplet margin means, not the ranking).
POOLINGS = ("mean", "lse", "lse_chan")


def check_pooling(pooling: str, temperature: float) -> None:
    """Raise ConfigError unless `pooling` is known and `temperature` is a positive number."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types (bf16/fp16), the input dtype otherwise (fp32 stays, fp64 stays)."""
    return torch.promote_types(dtype, torch.float32)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over `dim` among entries where `mask` (broadcastable) is True; masked entries get 0.

    Every slice must hold at least one True entry (validation guarantees a real token per item).
    """
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    return torch.softmax(torch.where(mask, logits, neg_inf), dim=dim)


def pool_masked(values: Tensor, mask: Tensor, dim: int, pooling: str, temperature: float) -> Tensor:
    """Pool `values` over `dim`, counting only entries where `mask` (broadcastable) is True.

    mean: Σ v / n over real entries.
    lse:  τ · log Σ exp(v / τ) over real entries (SCAN's LogSumExp with λ = 1/τ). It tends to
          the max as τ → 0; note it is not normalised by n, so it grows by τ·log n with length.
    lse_chan: log Σ exp(v / τ) (CHAN's `LSEPooling` with β = τ, lib/coding.py): lse / τ.
    """
    values = values.to(accumulation_dtype(values.dtype))
    mask = mask.expand_as(values)
    if pooling == "mean":
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        return torch.where(mask, values, zero).sum(dim) / mask.sum(dim).clamp_min(1).to(values.dtype)
    if pooling in ("lse", "lse_chan"):
        neg_inf = torch.tensor(float("-inf"), dtype=values.dtype, device=values.device)
        lse = torch.logsumexp(torch.where(mask, values / temperature, neg_inf), dim=dim)
        return lse if pooling == "lse_chan" else temperature * lse
    raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def segment_pool(
    values: Tensor, owner: Tensor, segments: int, pooling: str, temperature: float, *, counts: Tensor | None = None
) -> Tensor:
    """`pool_masked` over packed segments: values (N, R) whose column r belongs to segment owner[r]
    (e.g. the real words of several captions, caption after caption) → (N, segments). "sum" is also
    accepted (TGDT's Σ over words). LogSumExp subtracts each segment's own max, so a segment far
    below the others never underflows. `counts` (segments,): entries per segment, when the caller
    has them already (a prepared gallery); else counted from `owner`."""
    values = values.to(accumulation_dtype(values.dtype))
    n = values.shape[0]
    counts = (torch.bincount(owner, minlength=segments) if counts is None else counts).to(values.dtype)
    if pooling in ("mean", "sum"):
        sums = values.new_zeros(n, segments).index_add(1, owner, values)
        return sums / counts.clamp_min(1) if pooling == "mean" else sums
    if pooling in ("lse", "lse_chan"):
        scaled = values / temperature
        index = owner.expand(n, -1)
        top = scaled.new_full((n, segments), float("-inf")).scatter_reduce(1, index, scaled, "amax")
        top = top.detach()  # a shift of the exponent: the value does not depend on it
        sums = scaled.new_zeros(n, segments).index_add(1, owner, torch.exp(scaled - top[:, owner]))
        lse = torch.log(sums) + top
        return lse if pooling == "lse_chan" else temperature * lse
    raise ConfigError(f"pooling must be one of {POOLINGS} or sum, got {pooling!r}")

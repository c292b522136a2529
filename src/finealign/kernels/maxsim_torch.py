"""Chunked torch MaxSim: the fallback for CPU/fp64 and the readable statement of what the fused
Triton kernel computes. Autograd differentiates it directly.

For each (image i, caption j):
    word_best[w]   = max over real regions r of s(r, w)        (direction "text")
    region_best[r] = max over real words w of s(r, w)           (direction "visual")
    pooled = Σ weight · best        (pooling "mean": weight 1/n; "weighted": given weights)
           | τ · logsumexp(best / τ) over real tokens            (pooling "lse")
    score  = pooled (one direction) | ½ (text + visual)       ("both")
"""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.kernels.pooling_weights import mean_weights


def _pool(best: Tensor, mask: Tensor, weights: Tensor | None, pooling: str, temperature: float) -> Tensor:
    """Pool `best` (..., L) over its last dim; `mask`/`weights` broadcast to it."""
    mask = mask.expand_as(best)
    if pooling == "lse":
        return temperature * torch.logsumexp(best.masked_fill(~mask, float("-inf")) / temperature, dim=-1)
    # Zero the padded entries (-inf) before multiplying: -inf * 0 is NaN, and so is the weights'
    # gradient there (best * grad) if the product is masked only afterwards.
    best = torch.where(mask, best, torch.zeros((), dtype=best.dtype, device=best.device))
    assert weights is not None, f"{pooling!r} pooling needs weights"
    return (weights * best).sum(-1)


def maxsim_block(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    text_weights: Tensor | None,
    visual_weights: Tensor | None,
) -> Tensor:
    """(nv, nt) scores of one block, fp32 (or fp64 for fp64 inputs)."""
    acc = torch.promote_types(v.dtype, torch.float32)
    sim = torch.einsum("ikd,jld->ijkl", v, t).to(acc)
    valid = vmask[:, None, :, None] & tmask[None, :, None, :]
    sim = sim.masked_fill(~valid, float("-inf"))
    parts = []
    if direction in ("text", "both"):
        w = None if pooling == "lse" or text_weights is None else text_weights.to(acc)[None, :, :]
        parts.append(_pool(sim.amax(dim=2), tmask[None, :, :], w, pooling, temperature))
    if direction in ("visual", "both"):
        w = None if pooling == "lse" or visual_weights is None else visual_weights.to(acc)[:, None, :]
        parts.append(_pool(sim.amax(dim=3), vmask[:, None, :], w, pooling, temperature))
    return parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1])


def maxsim_torch(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    text_weights: Tensor | None = None,
    visual_weights: Tensor | None = None,
    chunk_visual: int = 64,
    chunk_text: int = 256,
) -> Tensor:
    """(Nv, Nt) scores in blocks, so the largest temporary is (chunk_visual, chunk_text, Lv, Lt)."""
    if pooling == "mean":
        text_weights, visual_weights = mean_weights(tmask), mean_weights(vmask)
    rows = []
    for i in range(0, v.shape[0], chunk_visual):
        vi = slice(i, i + chunk_visual)
        vw = None if visual_weights is None else visual_weights[vi]
        rows.append(
            torch.cat(
                [
                    maxsim_block(
                        v[vi],
                        vmask[vi],
                        t[j : j + chunk_text],
                        tmask[j : j + chunk_text],
                        pooling,
                        direction,
                        temperature,
                        None if text_weights is None else text_weights[j : j + chunk_text],
                        vw,
                    )
                    for j in range(0, t.shape[0], chunk_text)
                ],
                1,
            )
        )
    return torch.cat(rows, 0)


def maxsim_pairs_torch(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pairs: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    text_weights: Tensor | None = None,
    visual_weights: Tensor | None = None,
    chunk_pairs: int = 1024,
) -> Tensor:
    """(P,) scores of the listed (image, caption) pairs: item i's tokens against caption j's only,
    so the largest temporary is (chunk_pairs, Lv, Lt)."""
    if pooling == "mean":
        text_weights, visual_weights = mean_weights(tmask), mean_weights(vmask)
    acc = torch.promote_types(v.dtype, torch.float32)
    out = []
    for p in range(0, pairs.shape[0], chunk_pairs):
        iv, it = pairs[p : p + chunk_pairs, 0], pairs[p : p + chunk_pairs, 1]
        vm, tm = vmask[iv], tmask[it]
        sim = torch.einsum("pkd,pld->pkl", v[iv], t[it]).to(acc)
        sim = sim.masked_fill(~(vm[:, :, None] & tm[:, None, :]), float("-inf"))
        parts = []
        if direction in ("text", "both"):
            w = None if pooling == "lse" or text_weights is None else text_weights[it].to(acc)
            parts.append(_pool(sim.amax(dim=1), tm, w, pooling, temperature))
        if direction in ("visual", "both"):
            w = None if pooling == "lse" or visual_weights is None else visual_weights[iv].to(acc)
            parts.append(_pool(sim.amax(dim=2), vm, w, pooling, temperature))
        out.append(parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1]))
    return torch.cat(out) if out else v.new_zeros(0, dtype=acc)

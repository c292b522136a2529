"""L2 normalisation that is safe in every dtype and at every scale.

`F.normalize` squares the entries in the input's dtype: in fp16 a zero (or tiny) vector gives
0/1e-12 with the epsilon underflowed → NaN, and in fp32 tokens scaled by 1e19 overflow (norm inf →
all zeros) while tokens scaled by 1e-30 underflow (norm 0 → near-zero vectors). Cosine similarity
must not care about scale, so here the vector is first divided by its largest |entry| and the
norm is taken in at least fp32; the result is cast back to the input's dtype. An all-zero vector stays
zero: its cosine with anything is 0 (a documented, finite score).
"""

from __future__ import annotations

import torch
from torch import Tensor

_TINY = torch.finfo(torch.float32).tiny


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # fp64 stays fp64 (gradcheck)
    peak = work.abs().amax(dim=dim, keepdim=True)
    work = work / peak.clamp_min(_TINY)  # entries in [-1, 1]: no overflow, no underflow when squared
    return (work / work.norm(dim=dim, keepdim=True).clamp_min(1e-12)).to(x.dtype)

"""Fused token-level scoring kernels (Triton on CUDA) with torch fallbacks.

- `maxsim_scores`: mean-max / hard alignment / weighted token-wise interaction, one score per
  (image, caption) pair without materialising the (Nv, Nt, Lv, Lt) token-pair tensor.
- `sinkhorn_flow_scores`: TokenFlow's Σ flow·sim per pair, a log-domain (or scaling-domain)
  Sinkhorn run on chip, with a backward kernel for training.

Both also score a list of (image, caption) pairs (`pairs=`, forward only) for two_stage.

`backend="auto"` uses Triton for CUDA tensors (fp16/bf16/fp32) when it imports, torch otherwise.
"""

from finealign.kernels import ops  # noqa: F401  (registers the custom ops and their FLOP formulas)
from finealign.kernels.api import maxsim_scores, sinkhorn_flow_scores
from finealign.kernels.dispatch import BACKENDS, check_backend, use_triton
from finealign.kernels.sinkhorn_options import SinkhornOptions
from finealign.kernels.tiles import Tiles

__all__ = [
    "BACKENDS",
    "SinkhornOptions",
    "Tiles",
    "check_backend",
    "maxsim_scores",
    "sinkhorn_flow_scores",
    "use_triton",
]

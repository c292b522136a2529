"""Aligners with a fused kernel (finealign.kernels): the `backend` option and when the kernel runs.

A subclass implements one method, `kernel_scores(visual, text, pairs)` — the whole (Nv, Nt)
matrix for pairs=None, else the (P,) listed pairs — and the base class decides where it applies:

* the full matrix, when `backend` resolves to Triton (CUDA tensors, or "triton" under the
  interpreter) — also in training if the kernel has a backward (`kernel_has_backward`);
* listed pairs (two_stage's re-ranking), only when nothing needs a gradient: the pair kernels
  are forward-only, and the chunked torch path is the one to train through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from finealign.aligners.base import Aligner, AlignerConfig
from finealign.kernels import check_backend, use_triton
from finealign.tokens import TokenBatch


@dataclass
class KernelConfig(AlignerConfig):
    # "auto": the fused Triton kernel for CUDA tensors when Triton imports, torch otherwise;
    # "torch" / "triton" force one.
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backend(self.backend)


#: The Config dataclass of a kernel-backed aligner.
KC = TypeVar("KC", bound=KernelConfig)


class KernelAligner(Aligner[KC]):
    """An aligner whose scores a fused kernel computes when `config.backend` allows it."""

    Config = KernelConfig
    #: False: the full-matrix kernel is forward-only, so training takes the chunked torch path.
    kernel_has_backward: bool = True

    def kernel_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
        """Scores from the kernel with backend="triton": (Nv, Nt), or (P,) for `pairs`."""
        raise NotImplementedError

    def fused_scores(self, visual: TokenBatch, text: TokenBatch) -> Tensor | None:
        if not self._kernel_applies(visual, text, self.kernel_has_backward):
            return None
        return self.kernel_scores(visual, text, None).to(visual.tokens.dtype)

    def fused_pair_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor) -> Tensor | None:
        if not self._kernel_applies(visual, text, has_backward=False):
            return None
        return self.kernel_scores(visual, text, pairs).to(visual.tokens.dtype)

    def _kernel_applies(self, visual: TokenBatch, text: TokenBatch, has_backward: bool) -> bool:
        if not has_backward and torch.is_grad_enabled():
            tensors = [visual.tokens, text.tokens, visual.pooled, text.pooled, *self.parameters()]
            if any(x is not None and x.requires_grad for x in tensors):
                return False
        return use_triton(self.config.backend, visual.tokens)

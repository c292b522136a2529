"""Without CUDA, the Triton kernels run in Triton's CPU interpreter. Triton reads TRITON_INTERPRET
when a kernel is decorated, and finealign imports its kernel modules only on first use, so
setting it here (before any test calls a kernel) is early enough."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

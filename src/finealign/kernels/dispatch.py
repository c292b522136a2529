"""Which implementation runs a kernel: the fused Triton kernels on CUDA, plain torch elsewhere.

`backend="auto"` picks Triton when the tensors are on a CUDA device and Triton imports; "torch"
always uses the chunked torch path; "triton" insists on Triton (also on CPU tensors when
TRITON_INTERPRET=1 is set before Triton is first imported, which is how the CPU tests run it).
"""

from __future__ import annotations

import functools
import os

import torch

from finealign.checks import check_choice
from finealign.errors import ConfigError, PluginError

BACKENDS = ("auto", "torch", "triton")
# Triton's tl.dot handles these; fp64 (used by gradcheck) always takes the torch path under "auto".
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """Resolve `backend` for inputs like `tensor`; raise when "triton" cannot run them."""
    check_backend(backend)
    if backend == "torch":
        return False
    runnable = triton_importable() and (tensor.is_cuda or interpreting())
    if backend == "auto":
        return runnable and tensor.is_cuda and tensor.dtype in TRITON_DTYPES
    if not triton_importable():
        raise PluginError("backend='triton' needs the `triton` package: pip install triton")
    if not runnable:
        raise ConfigError(
            f"backend='triton' needs CUDA tensors (got {tensor.device}); set TRITON_INTERPRET=1 "
            "before importing triton to run the kernels on CPU in Triton's interpreter"
        )
    if tensor.dtype not in TRITON_DTYPES:
        raise ConfigError(f"backend='triton' supports {TRITON_DTYPES}, got {tensor.dtype}")
    return True

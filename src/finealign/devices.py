"""One home for device handling: which torch device a name means, and moving nested batches there.

`resolve_device`: "auto" (CUDA when available, else the CPU), "cpu", "cuda", "cuda:N"; anything
else, or CUDA without a GPU, is a ConfigError that says what is available. `to_device`: tensors
inside dicts, lists, tuples and objects with a `.to` (TokenBatch) move; the rest is left alone.
"""

from __future__ import annotations

from typing import Any

import torch

from finealign.errors import ConfigError

SUPPORTED_DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device) -> torch.device:
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in SUPPORTED_DEVICES:
        raise ConfigError(
            f"unknown device {str(spec)!r}; supported: {', '.join(SUPPORTED_DEVICES)} "
            "(optionally with an index, e.g. 'cuda:0')"
        )
    if index and not index.isdigit():
        raise ConfigError(f"device index must be a non-negative int, got {str(spec)!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(spec)!r} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use device=cpu or device=auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(spec)!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return torch.device("cuda", int(index) if index else torch.cuda.current_device())
    if index and index != "0":
        raise ConfigError(f"the CPU has no index {index}; use device=cpu")
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj

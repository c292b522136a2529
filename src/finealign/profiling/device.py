"""Which device and dtype a profile runs on, and the environment facts a report must state."""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
from collections.abc import Iterator

import torch

from finealign.devices import SUPPORTED_DEVICES, resolve_device  # noqa: F401  (one home: finealign.devices)
from finealign.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp64": torch.float64,
    "float64": torch.float64,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"dtype {name} is not a floating dtype profiling supports")
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}[dtype]


def device_name(device: torch.device) -> str:
    """A human name that also keys the throughput cache: the GPU model, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work; a no-op on CPU (whose ops are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def pinned_threads(num_threads: int | None) -> Iterator[int]:
    """Fix torch's intra-op CPU thread count for the block (restored after) and yield it, so a
    CPU timing is reproducible and the report can state the count it ran with."""
    before = torch.get_num_threads()
    if num_threads is not None:
        if num_threads < 1:
            raise ConfigError(f"threads must be a positive int, got {num_threads}")
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def environment(device: torch.device) -> dict[str, str]:
    """What a reader needs to judge a timing: device, software versions, date."""
    info = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu_threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        info["cuda"] = str(torch.version.cuda)
    return info

"""Peak memory of one call, over what was allocated before it (the inputs, the model).

GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` — exact bytes held by
torch tensors at the high-water mark, minus the bytes already allocated at the start.

CPU: tracemalloc does not see torch's allocator and process RSS mixes in the Python heap, the
allocator's cache and libraries, so we replay torch's own CPU allocation log instead: the profiler
with `profile_memory=True` records every tensor allocation and free (bytes, time); the running sum
of that log, maximised, is the peak of tensor memory the call added. It does not count memory
outside torch tensors (e.g. oneDNN/BLAS scratch buffers or Python objects).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from finealign.profiling.device import synchronize


@dataclass
class MemoryResult:
    peak_bytes: int | None  # None when this torch cannot report it
    method: str

    @property
    def peak_mib(self) -> float:
        return float("nan") if self.peak_bytes is None else self.peak_bytes / 2**20


def peak_memory(fn: Callable[..., Any], args: tuple, device: torch.device) -> MemoryResult:
    """Peak extra memory of `fn(*args)`: bytes above what was allocated when the call began."""
    if device.type == "cuda":
        return _cuda_peak(fn, args, device)
    return _cpu_peak(fn, args)


def _cuda_peak(fn, args, device) -> MemoryResult:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn(*args)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return MemoryResult(int(peak), "cuda_max_memory_allocated")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code writes to file descriptor 2 for the block: Kineto prints "USDT …
    profiler_start/stop" and "ERROR … gpuGetDeviceCount failed" on every CPU profile, which would
    fill every evaluation's log. Python-level errors still raise normally."""
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak(fn, args) -> MemoryResult:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args)
        del out  # the output's free is logged too; the peak already counted it
    try:
        log = allocation_log(prof)
    except AttributeError as exc:  # the log's accessors are not public API; say so, never guess
        return MemoryResult(None, f"unavailable ({exc})")
    return MemoryResult(peak_from_allocation_log(log), "torch_profiler_cpu_alloc")


def allocation_log(prof) -> list[tuple[int, int]]:
    """(time_ns, +bytes allocated / -bytes freed) for every CPU tensor (de)allocation a finished
    torch.profiler run recorded, in time order."""
    events = prof.profiler.kineto_results.events()
    log = [
        (e.start_ns(), int(e.nbytes()))
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    return sorted(log, key=lambda item: item[0])


def peak_from_allocation_log(log: list[tuple[int, int]]) -> int:
    """Maximum running sum of allocation deltas (0 if nothing was allocated)."""
    running = peak = 0
    for _, delta in log:
        running += delta
        peak = max(peak, running)
    return peak

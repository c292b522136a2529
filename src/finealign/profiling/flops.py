"""FLOP counts (torch.utils.flop_counter) and the device's measured matmul throughput.

FlopCounterMode counts matmul-like ops only (mm, bmm, addmm, baddbmm, convolution, SDPA, ...),
2 FLOPs per multiply-add; elementwise work (normalisation, masking, max, softmax, Sinkhorn's
exp/divide) is *not* counted. So `achieved fraction` = counted FLOPs / latency / the best
throughput a large matmul reaches on this device — how well an aligner's matmul work runs, not a
claim about its elementwise work.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from finealign.profiling.device import device_name, dtype_name, synchronize

CACHE_ENV = "FINEALIGN_CACHE"
CACHE_FILE = "matmul_throughput.json"


@dataclass
class FlopCount:
    total: int
    by_op: dict[str, int] = field(default_factory=dict)


def count_flops(fn: Callable[..., Any], args: tuple) -> FlopCount:
    """FLOPs FlopCounterMode counts for one call of `fn(*args)`."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    by_op: dict[str, int] = {}
    for ops in counter.get_flop_counts().values():
        for op, flops in ops.items():
            name = str(getattr(op, "__name__", op))
            by_op[name] = max(by_op.get(name, 0), int(flops))  # modules nest: "Global" holds all
    return FlopCount(total=int(counter.get_total_flops()), by_op=by_op)


def cache_dir() -> Path:
    """$FINEALIGN_CACHE, else ~/.cache/finealign."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finealign"


def throughput_key(device: torch.device, dtype: torch.dtype) -> str:
    # CPU throughput depends on the thread count, so it is part of the key there.
    threads = f"|threads={torch.get_num_threads()}" if device.type == "cpu" else ""
    return f"{device_name(device)}|{dtype_name(dtype)}{threads}"


def matmul_throughput(
    device: torch.device,
    dtype: torch.dtype,
    *,
    size: int | None = None,
    repeats: int = 5,
    use_cache: bool = True,
) -> float:
    """Best FLOP/s of a square `size`³ matmul in `dtype` on `device`, measured once and cached in
    a JSON file keyed by device name + dtype (+ CPU threads)."""
    key = throughput_key(device, dtype)
    path = cache_dir() / CACHE_FILE
    cache = _read_cache(path) if use_cache else {}
    if key in cache:
        return float(cache[key]["flops_per_s"])
    size = size or (8192 if device.type == "cuda" else 1024)
    flops_per_s = _measure_matmul(device, dtype, size, repeats)
    if use_cache:
        cache[key] = {"flops_per_s": flops_per_s, "size": size, "torch": torch.__version__}
        _write_cache(path, cache)
    return flops_per_s


def _measure_matmul(device, dtype, size, repeats) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    with torch.inference_mode():
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or corrupt cache: just measure again


def _write_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home must not fail the profile; the value is simply not cached

"""Latency with a sound method: warm-up, many repeats, median and spread.

CPU: `time.perf_counter` around each call (CPU ops are synchronous), with the thread count pinned
by the caller. CUDA: a pair of CUDA events per call (GPU time, not the Python launch time), or
`triton.testing.do_bench` when Triton is importable. Calls rotate through several input sets.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finealign.errors import ConfigError
from finealign.profiling.device import synchronize

TIMERS = ("auto", "perf_counter", "cuda_events", "do_bench")


@dataclass
class LatencyStats:
    """Summary of per-call times in milliseconds."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    repeats: int
    timer: str

    @property
    def iqr_ms(self) -> float:
        return self.q75_ms - self.q25_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.median_ms,
            "latency_q25_ms": self.q25_ms,
            "latency_q75_ms": self.q75_ms,
            "latency_iqr_ms": self.iqr_ms,
            "latency_min_ms": self.min_ms,
            "latency_max_ms": self.max_ms,
            "repeats": self.repeats,
            "timer": self.timer,
        }


def summarize(times_ms: Sequence[float], timer: str) -> LatencyStats:
    if not times_ms:
        raise ConfigError("no timings to summarize (repeats must be >= 1)")
    ordered = sorted(times_ms)
    if len(ordered) >= 2:
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q25 = q75 = ordered[0]
    return LatencyStats(
        median_ms=statistics.median(ordered),
        q25_ms=q25,
        q75_ms=q75,
        min_ms=ordered[0],
        max_ms=ordered[-1],
        mean_ms=statistics.fmean(ordered),
        repeats=len(ordered),
        timer=timer,
    )


def choose_timer(requested: str, device: torch.device) -> str:
    if requested not in TIMERS:
        raise ConfigError(f"unknown timer {requested!r}; choose one of {', '.join(TIMERS)}")
    if requested == "auto":
        if device.type != "cuda":
            return "perf_counter"
        return "do_bench" if _triton_do_bench() is not None else "cuda_events"
    if requested in ("cuda_events", "do_bench") and device.type != "cuda":
        raise ConfigError(f"timer {requested!r} needs a CUDA device, got {device}")
    if requested == "do_bench" and _triton_do_bench() is None:
        raise ConfigError("timer 'do_bench' needs triton, which is not importable here")
    return requested


def _triton_do_bench():
    try:
        from triton.testing import do_bench  # noqa: PLC0415  (optional, GPU-only dependency)
    except Exception:  # ImportError, or a triton that fails to initialise without a GPU
        return None
    return do_bench


def measure_latency(
    fn: Callable[..., Any],
    input_sets: Sequence[tuple],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 20,
    timer: str = "auto",
) -> LatencyStats:
    """Time `fn(*input_sets[i % len(input_sets)])` over `repeats` calls after `warmup` calls."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not input_sets:
        raise ConfigError("measure_latency needs at least one input set")
    timer = choose_timer(timer, device)
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    synchronize(device)
    if timer == "perf_counter":
        return summarize(_time_perf_counter(fn, input_sets, device, repeats), timer)
    if timer == "cuda_events":
        return summarize(_time_cuda_events(fn, input_sets, repeats), timer)
    try:
        return _time_do_bench(fn, input_sets, repeats)
    except Exception:  # an incompatible triton must not sink the run: fall back to CUDA events
        return summarize(_time_cuda_events(fn, input_sets, repeats), "cuda_events")


def _time_perf_counter(fn, input_sets, device, repeats) -> list[float]:
    times = []
    for i in range(repeats):
        args = input_sets[i % len(input_sets)]
        synchronize(device)
        start = time.perf_counter()
        fn(*args)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _time_cuda_events(fn, input_sets, repeats) -> list[float]:
    pairs = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*input_sets[i % len(input_sets)])
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in pairs]


def _time_do_bench(fn, input_sets, repeats) -> LatencyStats:
    do_bench = _triton_do_bench()
    counter = {"i": 0}

    def step():
        fn(*input_sets[counter["i"] % len(input_sets)])
        counter["i"] += 1

    # do_bench picks its repeat count from a time budget in ms (and flushes L2 between calls);
    # size the budget from one event-timed call so that it makes at least `repeats` calls.
    estimate_ms = max(_time_cuda_events(fn, input_sets, 1)[0], 1e-3)
    budget_ms = max(100.0, 1.2 * repeats * estimate_ms)
    q = do_bench(step, warmup=25, rep=budget_ms, quantiles=[0.0, 0.25, 0.5, 0.75, 1.0])
    q = [float(x) for x in q]
    return LatencyStats(
        median_ms=q[2],
        q25_ms=q[1],
        q75_ms=q[3],
        min_ms=q[0],
        max_ms=q[4],
        mean_ms=float("nan"),
        repeats=counter["i"],  # every call do_bench made, its own warm-up included
        timer="do_bench",
    )

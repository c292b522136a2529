"""Measure the cost side of cost-vs-accuracy: latency, peak memory, FLOPs, scaling, traces.

Light to import (torch only; pandas/matplotlib load when a report is written), so benchmark
scripts can use it on machines without hydra, optuna or POT.
"""

from finealign.profiling.device import environment, parse_dtype, pinned_threads, resolve_device
from finealign.profiling.flops import FlopCount, count_flops, matmul_throughput
from finealign.profiling.inputs import ProblemShape, random_input_sets
from finealign.profiling.measure import (
    ProfileSettings,
    build_aligner,
    profile_aligners,
    profile_callable,
    resolve_aligners,
)
from finealign.profiling.memory import MemoryResult, peak_memory
from finealign.profiling.scaling import PowerLawFit, fit_power_law
from finealign.profiling.timing import LatencyStats, measure_latency
from finealign.profiling.traces import capture_trace, load_trace

__all__ = [
    "FlopCount",
    "LatencyStats",
    "MemoryResult",
    "PowerLawFit",
    "ProblemShape",
    "ProfileSettings",
    "build_aligner",
    "capture_trace",
    "count_flops",
    "environment",
    "fit_power_law",
    "load_trace",
    "matmul_throughput",
    "measure_latency",
    "parse_dtype",
    "peak_memory",
    "pinned_threads",
    "profile_aligners",
    "profile_callable",
    "random_input_sets",
    "resolve_aligners",
    "resolve_device",
]

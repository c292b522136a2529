"""What scoring one image query against a whole caption gallery costs, with spread and references.

A single wall-clock timing of a whole gallery is one sample under whatever else the machine was
doing. Here the aligner scores the first `rows` images against every caption `repeats` times, and
each repeat is interleaved with two reference operations on the same data, timed in the same run:

- `global`: the matmul of pooled vectors (rows × d) @ (d × N_cap) — what a global aligner costs;
- `floor`: the BLAS product of every real visual token of those rows with every real caption token
  — any token-wise method must at least form these dot products.

Reported: median per-query latency with its interquartile range, and the per-repeat ratios
(method / reference) summarised the same way; a ratio measured against an operation timed in the
same breath survives a busy machine far better than milliseconds do.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from finealign.errors import ConfigError
from finealign.profiling.device import pinned_threads, synchronize
from finealign.profiling.timing import summarize
from finealign.tokens import TokenBatch

FLOOR_CHUNK = 16_384  # caption tokens per floor matmul block (bounds its output to ~64 MB at rows·49)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q25, median, q75) by the same rule as every other latency in finealign (timing.summarize)."""
    stats = summarize(values, "perf_counter")
    return stats.q25_ms, stats.median_ms, stats.q75_ms


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return 1000.0 * (time.perf_counter() - start)


def _global_reference(visual: TokenBatch, text: TokenBatch) -> Callable[[], Any]:
    v = visual.pooled if visual.pooled is not None else visual.mean_pooled()
    t = text.pooled if text.pooled is not None else text.mean_pooled()
    return lambda: v @ t.T


def _floor_reference(visual: TokenBatch, text: TokenBatch) -> Callable[[], Any]:
    v = visual.tokens[visual.mask]  # real tokens only: padding is not work any method must do
    t = text.tokens[text.mask]

    def floor() -> None:
        for start in range(0, len(t), FLOOR_CHUNK):
            v @ t[start : start + FLOOR_CHUNK].T

    return floor


def scoring_cost(
    aligner: Any,
    visual: TokenBatch,
    text: TokenBatch,
    *,
    rows: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Per-image-query scoring cost of `aligner` on this gallery (see the module docstring).

    Keys: cost_ms_per_query (median) with _q25/_q75/_iqr, cost_vs_global and cost_vs_floor
    (median of per-repeat ratios) with their _q25/_q75, the reference medians, cost_repeats,
    cost_rows, cost_threads.
    """
    if repeats < 5:
        raise ConfigError(f"cost repeats must be >= 5 (a median and an IQR need them), got {repeats}")
    if rows < 1:
        raise ConfigError(f"cost rows must be >= 1, got {rows}")
    device = device or visual.tokens.device
    rows = min(rows, len(visual))
    queries = visual[:rows]
    if getattr(aligner, "gallery_dependent", False):
        method = lambda: aligner.query_scores(queries, text, "i2t")  # noqa: E731
    else:
        method = lambda: aligner(queries, text)  # noqa: E731
    refs = {"global": _global_reference(queries, text), "floor": _floor_reference(queries, text)}
    times: dict[str, list[float]] = {"method": [], "global": [], "floor": []}
    with pinned_threads(threads) as used, torch.inference_mode():
        for _ in range(warmup):
            method(), refs["global"](), refs["floor"]()
        for _ in range(repeats):  # interleaved: a slow spell of the machine hits all three alike
            times["method"].append(_timed(method, device))
            for name, ref in refs.items():
                times[name].append(_timed(ref, device))
    per_query = [t / rows for t in times["method"]]
    q25, med, q75 = _quartiles(per_query)
    out = {
        "cost_ms_per_query": med, "cost_ms_per_query_q25": q25, "cost_ms_per_query_q75": q75,
        "cost_ms_per_query_iqr": q75 - q25, "cost_repeats": float(repeats), "cost_rows": float(rows),
        "cost_threads": float(used),
    }  # fmt: skip
    for name in refs:
        ratios = [m / max(r, 1e-9) for m, r in zip(times["method"], times[name], strict=True)]
        r25, rmed, r75 = _quartiles(ratios)
        out[f"cost_vs_{name}"], out[f"cost_vs_{name}_q25"], out[f"cost_vs_{name}_q75"] = rmed, r25, r75
        out[f"cost_ref_{name}_ms"] = statistics.median(times[name])
    return out

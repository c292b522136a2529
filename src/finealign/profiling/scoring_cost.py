"""What scoring image queries against a caption gallery costs, as a retrieval system pays it.

A retrieval system prepares its gallery once (normalising, sorting and packing the captions,
text-side weights, global vectors, an index: `Aligner.prepare_gallery`) and then scores queries
against it. So the cost is reported in three parts, each timed `repeats` times, interleaved with
reference operations on the same data in the same run:

- preparation: one `prepare_gallery` of the whole caption gallery, in ms (like an index build);
- single-query latency: one image query scored against the prepared gallery (the mean of
  `LATENCY_QUERIES` one-query calls per repeat), in ms;
- batched throughput: `rows` image queries (default `COST_BATCH`) in one call, in ms per query
  and queries per second.

References (timed alongside, on the same queries):

- `global`: the matmul of pooled vectors (queries × d) @ (d × N_cap) — what a global aligner costs;
- `floor`: the BLAS product of every real visual token of the queries with every real caption
  token (gathered once, like a prepared gallery) — any token-wise method must at least form these
  dot products (the real-token floor).

Reported: medians with their interquartile ranges, and the per-repeat ratios (method / reference)
summarised the same way; a ratio measured against an operation timed in the same breath survives
a busy machine far better than milliseconds do.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from finealign.aligners.base import prepare_gallery, score_queries
from finealign.cost_defaults import COST_BATCH
from finealign.errors import ConfigError
from finealign.profiling.device import pinned_threads, synchronize
from finealign.profiling.timing import summarize
from finealign.tokens import TokenBatch

FLOOR_CHUNK = 16_384  # caption tokens per floor matmul block (bounds its output to ~64 MB at rows·49)
#: Image queries per batched call: the one home of the default of `eval.cost_rows` (a batch of 64
#: queries, as a retrieval system serves them; fewer shares the per-call overhead among too few).
#: One-query calls per repeat whose mean is that repeat's single-query latency.
LATENCY_QUERIES = 8


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


def _global_reference(visual: TokenBatch, text_vectors: Tensor) -> Callable[[], Any]:
    v = visual.pooled if visual.pooled is not None else visual.mean_pooled()
    return lambda: v @ text_vectors.T


def _floor_reference(visual: TokenBatch, words: Tensor) -> Callable[[], Any]:
    v = visual.tokens[visual.mask]  # real tokens only: padding is not work any method must do

    def floor() -> None:
        for start in range(0, len(words), FLOOR_CHUNK):
            v @ words[start : start + FLOOR_CHUNK].T

    return floor


def _summary(out: dict[str, float], key: str, values: list[float], iqr: bool = False) -> None:
    q25, med, q75 = _quartiles(values)
    out[key], out[f"{key}_q25"], out[f"{key}_q75"] = med, q25, q75
    if iqr:
        out[f"{key}_iqr"] = q75 - q25


def scoring_cost(
    aligner: Any,
    visual: TokenBatch,
    text: TokenBatch,
    *,
    rows: int = COST_BATCH,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Preparation, single-query latency and batched throughput of `aligner` on this caption
    gallery, with same-run ratios to the references (see the module docstring).

    Keys (medians, with _q25/_q75; times also _iqr):
    cost_prepare_ms — one preparation of the gallery;
    cost_latency_ms, cost_latency_vs_floor, cost_latency_vs_global — one image query;
    cost_ms_per_query, cost_vs_floor, cost_vs_global — a batch of `rows` queries, per query;
    cost_queries_per_s — the batch's throughput (1000 / cost_ms_per_query);
    cost_ref_floor_ms, cost_ref_global_ms, cost_ref_latency_floor_ms — the references' medians;
    cost_repeats, cost_rows (the batch), cost_latency_queries, cost_threads.
    """
    if repeats < 5:
        raise ConfigError(f"cost repeats must be >= 5 (a median and an IQR need them), got {repeats}")
    if rows < 1:
        raise ConfigError(f"cost rows must be >= 1, got {rows}")
    device = device or visual.tokens.device
    rows = min(rows, len(visual))
    batch = visual[:rows]
    singles = [visual[i : i + 1] for i in range(min(LATENCY_QUERIES, len(visual)))]
    words = text.tokens[text.mask]  # the floor's captions: real tokens, gathered once
    text_vectors = text.pooled if text.pooled is not None else text.mean_pooled()
    single_floors = [_floor_reference(q, words) for q in singles]
    single_globals = [_global_reference(q, text_vectors) for q in singles]
    times: dict[str, list[float]] = {key: [] for key in ("prepare", "batch", "floor", "global", "single",
                                                         "single_floor", "single_global")}  # fmt: skip
    with pinned_threads(threads) as used, torch.inference_mode():
        gallery = prepare_gallery(aligner, text)
        calls: dict[str, Callable[[], Any]] = {
            "prepare": lambda: prepare_gallery(aligner, text),
            "batch": lambda: score_queries(aligner, batch, gallery),
            "floor": _floor_reference(batch, words),
            "global": _global_reference(batch, text_vectors),
            "single": lambda: [score_queries(aligner, q, gallery) for q in singles],
            "single_floor": lambda: [floor() for floor in single_floors],
            "single_global": lambda: [glob() for glob in single_globals],
        }
        for _ in range(warmup):
            for call in calls.values():
                call()
        for _ in range(repeats):  # interleaved: a slow spell of the machine hits all of them alike
            for key, call in calls.items():
                times[key].append(_timed(call, device))
    for key in ("single", "single_floor", "single_global"):
        times[key] = [t / len(singles) for t in times[key]]
    out: dict[str, float] = {
        "cost_repeats": float(repeats), "cost_rows": float(rows), "cost_latency_queries": float(len(singles)),
        "cost_threads": float(used),
    }  # fmt: skip
    _summary(out, "cost_prepare_ms", times["prepare"], iqr=True)
    _summary(out, "cost_ms_per_query", [t / rows for t in times["batch"]], iqr=True)
    _summary(out, "cost_latency_ms", times["single"], iqr=True)
    out["cost_queries_per_s"] = 1000.0 / max(out["cost_ms_per_query"], 1e-12)
    for method, prefix in (("batch", "cost_vs"), ("single", "cost_latency_vs")):
        refs = ("floor", "global") if method == "batch" else ("single_floor", "single_global")
        for ref in refs:
            ratios = [m / max(r, 1e-9) for m, r in zip(times[method], times[ref], strict=True)]
            _summary(out, f"{prefix}_{ref.removeprefix('single_')}", ratios)
    out["cost_ref_floor_ms"] = statistics.median(times["floor"])
    out["cost_ref_global_ms"] = statistics.median(times["global"])
    out["cost_ref_latency_floor_ms"] = statistics.median(times["single_floor"])
    return out

"""Every aligner's scoring cost against the real-token floor at 1, 8 and 64 image queries, with and
without a prepared caption gallery, ratios measured in one run.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/scoring_cost_cpu.py [--captions 2500]
        [--repeats 3] [--threads 1] [--aligners mean_max,hard] [--batches 1,8,64]

The gallery: 2,500 captions of 6–19 real words (prefix masks, 19 positions), image queries of 49
regions (all real), d = 256, Gaussian tokens (as `finealign profile` draws them) — the shape of
issue 24's table. Each aligner runs with its defaults (weighted_mean_max with dim 256; tokenflow
converged: ε 0.05, tolerance 1e-3; two_stage top-10 shortlists re-ranked by mean_max).

For each aligner the caption gallery is prepared once (`prepare_gallery`, its CPU time reported
as "prep ms", the median of the rounds). Then each round times, interleaved, for every batch size
q: `score_prepared` of q queries against the prepared gallery ("prepared"), the aligner called on
the captions (`aligner(visual, text)`, preparing on the fly: "on the fly"), and the floor of
profiling/scoring_cost.py for the same queries — the BLAS product of every real visual token with
every real caption token (gathered once), which any token-level method must form. q = 1 and 8 time
8 and 1 calls per round (8 different queries each); ms/query is a call's time over its queries.
Reported: medians over rounds of ms/query (prepared) and of the per-round ratios to the floor, CPU
time of this process (a single-threaded process's CPU time leaves out the time other jobs on a
shared machine hold the core). Like benchmarks/sinkhorn_cpu.py the script first frees a 30 MB block
so that glibc serves per-block temporaries from its heap, as in a long evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from finealign.aligners.base import prepare_gallery, score_queries
from finealign.profiling.scoring_cost import FLOOR_CHUNK
from finealign.registry import create_aligner, list_aligners
from finealign.tokens import TokenBatch

OPTIONS: dict[str, dict[str, Any]] = {"weighted_mean_max": {"dim": 256}}


def inputs(n_img: int, n_cap: int, generator: torch.Generator, d: int = 256) -> tuple[TokenBatch, TokenBatch]:
    visual = TokenBatch(torch.randn(n_img, 49, d, generator=generator), torch.ones(n_img, 49, dtype=torch.bool))
    lengths = torch.randint(6, 20, (n_cap,), generator=generator)
    text = TokenBatch(torch.randn(n_cap, 19, d, generator=generator), torch.arange(19)[None, :] < lengths[:, None])
    return visual, text


def floor(visual: TokenBatch, words: torch.Tensor) -> Callable[[], None]:
    """profiling.scoring_cost's floor: the queries' real tokens × the captions' real tokens, in chunks."""
    v = visual.tokens[visual.mask]

    def product() -> None:
        for start in range(0, len(words), FLOOR_CHUNK):
            v @ words[start : start + FLOOR_CHUNK].T

    return product


def cpu_ms(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return 1000.0 * (time.process_time() - start)


def measure(name: str, visual: TokenBatch, text: TokenBatch, batches: list[int], repeats: int) -> dict[str, Any]:
    aligner = create_aligner(name, **OPTIONS.get(name, {}))
    words = text.tokens[text.mask]
    sizes = {q: [visual[i * q : (i + 1) * q] for i in range(max(1, 8 // q))] for q in batches}
    times: dict[str, list[float]] = {"prep": []}
    with torch.inference_mode():
        gallery = prepare_gallery(aligner, text)
        calls: dict[str, Callable[[], Any]] = {"prep": lambda: prepare_gallery(aligner, text)}
        for q, groups in sizes.items():
            floors = [floor(g, words) for g in groups]
            calls[f"prepared@{q}"] = lambda groups=groups: [score_queries(aligner, g, gallery) for g in groups]
            calls[f"fly@{q}"] = lambda groups=groups: [
                aligner.query_scores(g, text, "i2t") if aligner.gallery_dependent else aligner(g, text) for g in groups
            ]
            calls[f"floor@{q}"] = lambda floors=floors: [f() for f in floors]
        score_queries(aligner, sizes[batches[0]][0], gallery)  # warm-up: first-call allocations
        for key in calls:
            times.setdefault(key, [])
        for _ in range(repeats):
            for key, call in calls.items():
                times[key].append(cpu_ms(call))
    row: dict[str, Any] = {"aligner": name, "prep ms": statistics.median(times["prep"])}
    for q, groups in sizes.items():
        queries = sum(len(g) for g in groups)
        row[f"ms/query @{q}"] = statistics.median(times[f"prepared@{q}"]) / queries
        for kind, label in (("prepared", "× floor"), ("fly", "× floor on the fly")):
            ratios = [m / f for m, f in zip(times[f"{kind}@{q}"], times[f"floor@{q}"], strict=True)]
            row[f"{label} @{q}"] = statistics.median(ratios)
        row[f"floor ms/query @{q}"] = statistics.median(times[f"floor@{q}"]) / queries
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aligners", default="all", help="comma-separated registered names, or all")
    parser.add_argument("--batches", default="1,8,64", help="comma-separated numbers of image queries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm = torch.empty(30 * 2**20 // 4)  # glibc's thresholds follow the largest freed mapping
    del warm
    batches = [int(b) for b in args.batches.split(",")]
    names = list_aligners() if args.aligners == "all" else args.aligners.split(",")
    visual, text = inputs(max(batches + [8]), args.captions, torch.Generator().manual_seed(0))
    print(f"{args.captions} captions ({int(text.mask.sum())} real tokens), 49 visual tokens, d 256, "
          f"{args.threads} thread(s), {args.repeats} rounds, CPU time", flush=True)  # fmt: skip
    rows = []
    for name in names:
        start = time.perf_counter()
        rows.append(measure(name, visual, text, batches, args.repeats))
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    frame = pd.DataFrame(rows)
    ratio_columns = ["aligner", "prep ms"] + [
        c for q in batches for c in (f"ms/query @{q}", f"× floor @{q}", f"× floor on the fly @{q}")
    ]
    print("\nmedians over rounds; × floor: median of per-round ratios to the real-token floor of the same queries")
    print(frame[ratio_columns].to_markdown(index=False, floatfmt=".3g"))
    print("\nfloor ms/query (real visual tokens × every real caption token)")
    print(frame[["aligner"] + [f"floor ms/query @{q}" for q in batches]].to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()

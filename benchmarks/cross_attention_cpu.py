"""cross_attention on the CPU against the real-token floor, before/after the packed block path, in one run.

    PYTHONPATH=src python benchmarks/cross_attention_cpu.py [--images 200] [--captions 1000]
        [--threads 1] [--repeats 5]

200 image queries × 1,000 captions, 49 regions (all real), captions of 6–19 real words (prefix
masks, 19 positions), d = 256, Gaussian tokens (as `finealign profile` draws them). Each round
times, interleaved: the aligner as it scores now (captions packed and grouped by length, see
aligners/cross_attention.py), the padded block path it replaced ("before"), and the floor of
profiling/scoring_cost.py — the BLAS product of every real visual token with every real caption
token, which any token-level method must form. Reported: CPU-time medians and the median of the
per-round ratios to the floor (CPU time of this single-threaded process leaves out the time other
jobs on a shared machine hold the core), and how far the two paths' scores differ. Like
benchmarks/sinkhorn_cpu.py, the script first frees a 30 MB block so that glibc serves the per-block
temporaries (a few MB each) from its heap, as in a long evaluation, instead of faulting in fresh
pages for every block (--cold-allocator skips this).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from finealign.aligners.cross_attention import CrossAttentionAligner
from finealign.profiling.scoring_cost import FLOOR_CHUNK
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


class PaddedCrossAttention(CrossAttentionAligner):
    """The block path before 2026-12-03: every (image, caption) pair's padded Lv × Lt block."""

    def score_block(self, visual: TokenBatch, text: TokenBatch):
        return self.padded_block_scores(visual, text)


def inputs(n_img: int, n_cap: int, generator: torch.Generator, d: int = 256) -> tuple[TokenBatch, TokenBatch]:
    visual = TokenBatch(torch.randn(n_img, 49, d, generator=generator), torch.ones(n_img, 49, dtype=torch.bool))
    lengths = torch.randint(6, 20, (n_cap,), generator=generator)
    text = TokenBatch(torch.randn(n_cap, 19, d, generator=generator), torch.arange(19)[None, :] < lengths[:, None])
    return visual, text


def floor(visual: TokenBatch, text: TokenBatch):
    """profiling.scoring_cost's floor: real visual tokens × real caption tokens, in chunks."""
    v, t = visual.tokens[visual.mask], text.tokens[text.mask]

    def product() -> None:
        for start in range(0, len(t), FLOOR_CHUNK):
            v @ t[start : start + FLOOR_CHUNK].T

    return product


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-allocator", action="store_true", help="skip the allocator warm-up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.cold_allocator:
        warm = torch.empty(30 * 2**20 // 4)  # glibc's thresholds follow the largest freed mapping
        del warm
    visual, text = inputs(args.images, args.captions, torch.Generator().manual_seed(0))
    after, before = create_aligner("cross_attention"), PaddedCrossAttention()
    methods = {"cross_attention (packed, now)": lambda: after(visual, text),
               "cross_attention (padded, before)": lambda: before(visual, text),
               "real-token floor": floor(visual, text)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        gap = float((after(visual, text) - before(visual, text)).abs().max())
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(cpu_seconds(fn))
    rows = []
    for name, measured in times.items():
        ratios = [m / f for m, f in zip(measured, times["real-token floor"], strict=True)]
        rows.append({"method": name, "CPU s": statistics.median(measured), "× floor": statistics.median(ratios),
                     "× floor min–max": f"{min(ratios):.2f}–{max(ratios):.2f}"})  # fmt: skip
    print(f"{args.images} images × {args.captions} captions, 49 regions, 6–19 real words, d = 256, "
          f"{args.threads} thread(s), medians of {args.repeats} interleaved rounds (CPU time), "
          f"allocator {'cold' if args.cold_allocator else 'warmed'}; "
          f"max |score now − before| = {gap:.1e}")  # fmt: skip
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()

"""Token scoring on the CPU against its floors, in fp32 and in bf16 (autocast), in one run.

    PYTHONPATH=src python benchmarks/floor_bf16_cpu.py [--threads 1] [--repeats 5]

100 images × 1,000 captions, 49 regions × 32 word positions with 8–32 real words (63 % real on
average), d = 256. For mean_max and hard, interleaved repeats of: the aligner's scoring, the BLAS
product of all *padded* token pairs and of all *real* token pairs (the floors: any token-wise method
forms these dot products), each in fp32 and under bf16 autocast (the CPU's avx512_bf16 / AMX path
when present). Prints medians, the ratios to each floor, the bf16 speed-up, and what bf16 costs in
accuracy: the largest score difference and the share of images whose top-1 caption changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    nv, nt, d = 100, 1000, 256
    visual = TokenBatch(torch.randn(nv, 49, d, generator=g), torch.ones(nv, 49, dtype=torch.bool))
    lengths = torch.randint(8, 33, (nt,), generator=g)
    text = TokenBatch(torch.randn(nt, 32, d, generator=g), torch.arange(32)[None] < lengths[:, None])
    v_all, t_all = visual.tokens.reshape(-1, d), text.tokens.reshape(-1, d)
    v_real, t_real = visual.tokens[visual.mask], text.tokens[text.mask]

    def floor(v, t):
        for start in range(0, len(t), 8192):
            v @ t[start : start + 8192].T

    rows = []
    for name in ("mean_max", "hard"):
        aligner = create_aligner(name)
        scores = {}
        for dtype in ("fp32", "bf16"):
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else torch.no_grad
            times = {"aligner": [], "padded floor": [], "real floor": []}
            with torch.no_grad(), ctx():
                scores[dtype] = aligner(visual, text).float()
                floor(v_real, t_real)
                for _ in range(args.repeats):
                    times["aligner"].append(timed(lambda: aligner(visual, text)))
                    times["padded floor"].append(timed(lambda: floor(v_all, t_all)))
                    times["real floor"].append(timed(lambda: floor(v_real, t_real)))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"aligner": name, "dtype": dtype, "score_s": med["aligner"],
                         "× padded floor": med["aligner"] / med["padded floor"],
                         "× real floor": med["aligner"] / med["real floor"]})  # fmt: skip
        top_changed = float((scores["fp32"].argmax(1) != scores["bf16"].argmax(1)).float().mean())
        rows[-1].update({"bf16 speed-up": rows[-2]["score_s"] / rows[-1]["score_s"],
                         "max |Δscore|": float((scores["fp32"] - scores["bf16"]).abs().max()),
                         "top-1 changed": top_changed})  # fmt: skip
    print(f"{nv} × {nt} items, 49 × 32 tokens (63 % of word positions real), d = {d}, {args.threads} thread(s), "
          f"median of {args.repeats}")  # fmt: skip
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()

"""Less padding in chunked token scoring: the old fixed blocks vs length-sorted, trimmed blocks.

    PYTHONPATH=src python benchmarks/padding_cpu.py

100 images × 1,000 captions, 49 regions × 32 word positions with 8–32 real words, d = 256, one
thread. "padded" scores fixed blocks of 64 × 256 items over all positions (the aligner before
2026-12-01); "bucketed" is `Aligner.forward` now (captions sorted by length, each block cut to the
positions its items use). Prints both times, their ratio, and the largest score difference.
"""

from __future__ import annotations

import time

import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    nv, nt = 100, 1000
    visual = TokenBatch(torch.randn(nv, 49, 256, generator=g), torch.ones(nv, 49, dtype=torch.bool))
    lengths = torch.randint(8, 33, (nt,), generator=g)
    text = TokenBatch(torch.randn(nt, 32, 256, generator=g), torch.arange(32)[None] < lengths[:, None])
    for name in ("mean_max", "hard"):
        aligner = create_aligner(name)

        def padded():
            v, t = aligner.prepare(visual), aligner.prepare(text)
            return torch.cat(
                [
                    torch.cat([aligner.score_block(v[i : i + 64], t[j : j + 256]) for j in range(0, nt, 256)], 1)
                    for i in range(0, nv, 64)
                ]
            )

        with torch.no_grad():
            padded(), aligner(visual, text)  # warm-up
            start = time.perf_counter()
            old = padded()
            mid = time.perf_counter()
            new = aligner(visual, text)
            end = time.perf_counter()
        print(
            f"{name}: padded {mid - start:.3f} s, bucketed {end - mid:.3f} s, "
            f"{(mid - start) / (end - mid):.2f}x, max |diff| {(old - new).abs().max().item():.1e}"
        )


if __name__ == "__main__":
    main()

"""What two-stage re-ranking saves: the full local matrix vs global shortlist + local on the shortlist.

    PYTHONPATH=src python benchmarks/two_stage.py --images 200 --captions 1000 --local mean_max
    PYTHONPATH=src python benchmarks/two_stage.py --local tokenflow --images 64 --captions 320 --out runs/two_stage

Random padded tokens (CPU, or CUDA with --device cuda). For each top-K it prints the local pairs
scored, the time of `two_stage` and of the full local matrix, their ratio, and how many of the
full-matrix i2t top-1 choices the two-stage matrix keeps (with random data the global and local
scores are unrelated, so this measures the shortlist's reach, not retrieval quality).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def random_tokens(n: int, length: int, dim: int, device: str, generator: torch.Generator) -> TokenBatch:
    tokens = torch.randn(n, length, dim, generator=generator).to(device)
    lengths = torch.randint(max(1, length // 2), length + 1, (n,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    return TokenBatch(tokens, mask, torch.randn(n, dim, generator=generator).to(device))


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--lv", type=int, default=36, help="regions per image")
    parser.add_argument("--lt", type=int, default=16, help="words per caption")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--local", default="mean_max")
    parser.add_argument("--top-k", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--direction", default="both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="folder for two_stage.csv and two_stage.md")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    visual = random_tokens(args.images, args.lv, args.dim, args.device, g)
    text = random_tokens(args.captions, args.lt, args.dim, args.device, g)
    with torch.no_grad():
        full_sec, full = timed(lambda: create_aligner(args.local)(visual, text), args.repeats)
        rows = []
        for k in args.top_k:
            aligner = create_aligner("two_stage", local=args.local, top_k=k, direction=args.direction)
            sec, scores = timed(lambda: aligner(visual, text), args.repeats)
            pairs = int(aligner.shortlist(aligner.global_similarity(visual, text)).sum())
            rows.append(
                {
                    "local": args.local,
                    "top_k": k,
                    "direction": args.direction,
                    "local pairs": pairs,
                    "pair fraction": pairs / (args.images * args.captions),
                    "two_stage ms": 1e3 * sec,
                    "full local ms": 1e3 * full_sec,
                    "speed-up (full / two_stage)": full_sec / sec,
                    "i2t top-1 kept": float((scores.argmax(1) == full.argmax(1)).float().mean()),
                }
            )
    table = pd.DataFrame(rows)
    print(f"{args.images} images × {args.captions} captions, Lv={args.lv}, Lt={args.lt}, d={args.dim}, {args.device}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "two_stage.csv", index=False)
        (args.out / "two_stage.md").write_text(table.to_markdown(index=False, floatfmt=".3g") + "\n")


if __name__ == "__main__":
    main()

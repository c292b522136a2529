"""TokenFlow training step with and without per-block checkpointing: peak memory and time.

    PYTHONPATH=src python benchmarks/tokenflow_training.py [--device cuda] [--iterations 50]

One forward + backward of the tokenflow aligner on a training batch (random padded tokens,
gradients to the tokens and pooled vectors), `checkpoint` on and off, on the same inputs.
Prints both rows and the ratios measured in this run; checks the gradients agree.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from finealign.profiling.memory import peak_memory
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def batch(n, length, dim, device, gen):
    tokens = torch.randn(n, length, dim, generator=gen).to(device)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen).to(device)
    mask = torch.arange(length, device=device)[None] < lengths[:, None]
    pooled = torch.randn(n, dim, generator=gen).to(device)
    return tokens.requires_grad_(), mask, pooled.requires_grad_()


def step(aligner, v, vm, vp, t, tm, tp):
    for x in (v, vp, t, tp):
        x.grad = None
    aligner(TokenBatch(v, vm, vp), TokenBatch(t, tm, tp)).diagonal().sum().backward()
    return [x.grad for x in (v, vp, t, tp)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--regions", type=int, default=49)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    v, vm, vp = batch(args.batch, args.regions, args.dim, device, gen)
    t, tm, tp = batch(args.batch, args.words, args.dim, device, gen)
    rows, grads = [], {}
    for ckpt in (False, True):
        aligner = create_aligner("tokenflow", iterations=args.iterations, checkpoint=ckpt, backend="torch").train()
        grads[ckpt] = step(aligner, v, vm, vp, t, tm, tp)  # warm-up, and the gradients to compare
        mem = peak_memory(lambda: step(aligner, v, vm, vp, t, tm, tp), (), device)
        start = time.perf_counter()
        step(aligner, v, vm, vp, t, tm, tp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append(
            dict(checkpoint=ckpt, seconds=time.perf_counter() - start, peak_MiB=mem.peak_mib, memory_method=mem.method)
        )
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(grads[True], grads[False]))
    table = pd.DataFrame(rows)
    print(
        f"tokenflow fwd+bwd, {args.batch}x{args.batch} pairs, {args.regions}x{args.words} tokens, "
        f"d={args.dim}, {args.iterations} iterations, {device}"
    )
    print(table.to_markdown(index=False, floatfmt=".3g"))
    off, on = rows
    print(
        f"checkpoint: memory x{on['peak_MiB'] / off['peak_MiB']:.3f}, time x{on['seconds'] / off['seconds']:.2f}; "
        f"max relative gradient difference {diff:.1e}"
    )
    if diff > 1e-5:
        raise SystemExit("gradients differ between checkpoint on and off")


if __name__ == "__main__":
    main()

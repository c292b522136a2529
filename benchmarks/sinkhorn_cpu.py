"""Converged TokenFlow on the CPU: log vs scaling-domain Sinkhorn, against mean_max, in one run.

    PYTHONPATH=src python benchmarks/sinkhorn_cpu.py [--pairs 1024] [--threads 1] [--epsilon 0.05]

Inputs mimic trained token features: regions and words share a few latent "objects" (cosines
spread over roughly [-0.3, 0.75]), 49 regions × 32 words (63 % of word positions real), d = 256,
importance marginals (τ = 0.1). Prints, for one block of pairs: scoring time of the full tokenflow
aligner to a marginal tolerance of 1e-3 with each solver domain, the iterations and error reached,
the same with 3 fixed iterations (the old main-job setting) and its error, and the forward+backward
time of a training step (TokenFlow's default implicit gradient, and the unrolled one) — each as a
ratio to mean_max on the same inputs, measured in this run.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def inputs(n_img: int, n_cap: int, generator: torch.Generator, d: int = 256):
    objects = torch.randn(max(n_img, n_cap), 8, d, generator=generator)
    v = objects[:n_img].repeat(1, 7, 1)[:, :49] * 0.6 + 0.5 * torch.randn(n_img, 49, d, generator=generator)
    t = objects[:n_cap].repeat(1, 4, 1)[:, :32] * 0.6 + 0.5 * torch.randn(n_cap, 32, d, generator=generator)
    tmask = torch.rand(n_cap, 32, generator=generator) < 0.63
    tmask[:, 0] = True
    return TokenBatch(v, torch.ones(n_img, 49, dtype=torch.bool)), TokenBatch(t, tmask)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1024, help="image-caption pairs per block (n × n)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = int(round(args.pairs**0.5))
    visual, text = inputs(n, n, torch.Generator().manual_seed(0))
    settings = {
        "mean_max": ("mean_max", {}),
        "tokenflow log, to 1e-3": (
            "tokenflow",
            dict(solver_domain="log", epsilon=args.epsilon, chunk_visual=n, chunk_text=n),
        ),
        "tokenflow scaling, to 1e-3": ("tokenflow", dict(epsilon=args.epsilon, chunk_visual=n, chunk_text=n)),
        "tokenflow scaling, to 1e-3, unrolled gradient": (
            "tokenflow",
            dict(epsilon=args.epsilon, chunk_visual=n, chunk_text=n, gradient="unrolled"),
        ),
        "tokenflow scaling, 3 it. (old main job)": (
            "tokenflow",
            dict(epsilon=args.epsilon, iterations=3, tolerance=0, chunk_visual=n, chunk_text=n),
        ),
    }
    rows = []
    for label, (name, options) in settings.items():
        aligner = create_aligner(name, **options)
        with torch.no_grad():
            score_s = timed(lambda: aligner(visual, text), args.repeats)
        report = aligner.diagnostics()
        train = create_aligner(name, **options, **({"checkpoint": False} if name == "tokenflow" else {})).train()
        v = TokenBatch(visual.tokens.clone().requires_grad_(True), visual.mask)

        def step():
            train(v, text).sum().backward()

        step_s = timed(step, 1 if "log" in label else args.repeats)
        rows.append(
            {
                "method": label,
                "score_ms": 1e3 * score_s,
                "step_ms": 1e3 * step_s,
                "iterations": report.get("iterations"),
                "marginal_err": report.get("marginal_error"),
            }
        )
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["score × mean_max"] = table["score_ms"] / base["score_ms"]
    table["step × mean_max"] = table["step_ms"] / base["step_ms"]
    print(f"{n} × {n} pairs, 49 × 32 tokens, d = 256, ε = {args.epsilon}, {args.threads} thread(s)")
    print(
        table.round({"score_ms": 1, "step_ms": 1, "score × mean_max": 2, "step × mean_max": 2}).to_markdown(
            index=False, floatfmt=".4g"
        )
    )


if __name__ == "__main__":
    main()

"""Converged TokenFlow on the CPU against mean_max, before/after the Newton solver, in one run.

    PYTHONPATH=src python benchmarks/sinkhorn_cpu.py [--pairs 1024] [--threads 1] [--epsilon 0.05]
        [--repeats 9] [--with-log] [--cold-allocator]

Inputs mimic trained token features: regions and words share a few latent "objects" (cosines
spread over roughly [-0.3, 0.75]), 49 regions × 32 words (63 % of word positions real), d = 256,
importance marginals (τ = 0.1). For one block of pairs, each setting's scoring time and the
forward+backward time of a training step are measured `repeats` times, interleaved (every setting
once per round), and reported as the median of the per-round ratios to mean_max on the same
inputs, with the iterations and row-marginal error the solver reached:

* tokenflow, Newton (the default since 2026-12-03: sweeps, then Newton steps on the slow pairs;
  implicit gradient through the score),
* tokenflow, plain Sinkhorn (`acceleration: none`: the solver before, scaling domain, implicit
  gradient of the plan) — "before",
* the unrolled gradient (plain iterates), 3 fixed iterations (the old main-job setting), and with
  --with-log the log-domain solver (slow: ~100× mean_max).

Times are process CPU time of this (single-threaded) process, which leaves out the time other jobs
on a shared machine hold the core; wall-clock medians are printed too.

Allocator: a short process that allocates blocks of a few MB per call faults in fresh pages on
every call (glibc maps such blocks anew, or trims its heap after each call: ~6,000 page faults,
~15 ms, per TokenFlow call here), which a long evaluation does not (its large frees raise glibc's
thresholds). By default the script frees one 30 MB tensor first, so all methods run in that steady
state; --cold-allocator skips it.
"""

from __future__ import annotations

import argparse
import statistics
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


def settings(n: int, epsilon: float, with_log: bool) -> dict[str, tuple[str, dict]]:
    block = dict(epsilon=epsilon, chunk_visual=n, chunk_text=n)
    rows = {
        "mean_max": ("mean_max", {}),
        "tokenflow, Newton (default), to 1e-3": ("tokenflow", block),
        "tokenflow, plain Sinkhorn (before), to 1e-3": ("tokenflow", dict(block, acceleration="none")),
        "tokenflow, plain Sinkhorn, unrolled gradient": ("tokenflow", dict(block, gradient="unrolled")),
        "tokenflow, 3 it. (old main job)": ("tokenflow", dict(block, iterations=3, tolerance=0)),
    }
    if with_log:
        rows["tokenflow, log domain (plain), to 1e-3"] = ("tokenflow", dict(block, acceleration="none",
                                                                             solver_domain="log"))  # fmt: skip
    return rows


def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1024, help="image-caption pairs per block (n × n)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--with-log", action="store_true", help="also time the log-domain solver (slow)")
    parser.add_argument("--cold-allocator", action="store_true", help="skip the allocator warm-up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.cold_allocator:
        # Frees a 30 MB block: glibc then serves blocks under 30 MB from a heap it trims only
        # above 60 MB (its thresholds follow the largest freed mapping, up to 32 MB).
        warm = torch.empty(30 * 2**20 // 4)
        del warm
    n = int(round(args.pairs**0.5))
    visual, text = inputs(n, n, torch.Generator().manual_seed(0))
    cases = {}
    for label, (name, options) in settings(n, args.epsilon, args.with_log).items():
        train_options = dict(options, checkpoint=False) if name == "tokenflow" else options
        cases[label] = (create_aligner(name, **options), create_aligner(name, **train_options).train())
    leaf = TokenBatch(visual.tokens.clone().requires_grad_(True), visual.mask)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {label: {"score": [], "step": []} for label in cases}
    reports = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up and is dropped
        for label, (aligner, trainer) in cases.items():
            with torch.no_grad():
                aligner.reset_diagnostics()
                score = timed(lambda: aligner(visual, text))
                reports[label] = aligner.diagnostics()
            step = timed(lambda: trainer(leaf, text).sum().backward())
            if round_:
                times[label]["score"].append(score)
                times[label]["step"].append(step)
    base = times["mean_max"]
    rows = []
    for label, measured in times.items():
        row: dict[str, object] = {"method": label}
        for kind in ("score", "step"):
            cpu = [c for c, _ in measured[kind]]
            row[f"{kind} ms"] = 1e3 * statistics.median(cpu)
            row[f"{kind} wall ms"] = 1e3 * statistics.median(w for _, w in measured[kind])
            row[f"{kind} × mean_max"] = statistics.median(c / b for c, (b, _) in zip(cpu, base[kind], strict=True))
        report = reports[label]
        row["iterations"] = report.get("iterations")
        row["marginal err"] = report.get("marginal_error")
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"{n} × {n} pairs, 49 × 32 tokens, d = 256, ε = {args.epsilon}, {args.threads} thread(s), "
          f"CPU-time medians of {args.repeats} interleaved rounds, ratios = median of per-round ratios, "
          f"allocator {'cold' if args.cold_allocator else 'warmed'}")  # fmt: skip
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()

"""Merge the trials tables of one or more sweeps into the standard retrieval table + a plot.

    python benchmarks/flickr8k_table.py runs/sweeps/flickr8k_aligners/trials.csv [more.csv ...] \
        --out benchmarks/results/flickr8k-2026-11-28

Prints (and writes table.md / table.csv / tradeoff.png): per aligner i2t/t2i R@1/5/10, RSUM,
scoring latency and peak memory on the test gallery, training time, and the Pareto front. When an
aligner has several runs (seeds: `finealign sweep sweep.seed=1 --study NAME_s1`), also seeds.md /
seeds.csv: per aligner the number of runs, mean, standard deviation, min and max of RSUM and the
mean R@1s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from finealign.engine.results import solver_label
from finealign.sweeps.plot import plot_tradeoff
from finealign.sweeps.results import pareto_mask

COLUMNS = [
    "aligner",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
    "score_latency_ms",
    "score_peak_mem_mb",
    "train_time_s",
    "seed",
    "source",
]


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per aligner over its runs, best mean RSUM first."""
    summary = table.groupby("aligner").agg(
        runs=("rsum", "size"),
        rsum_mean=("rsum", "mean"),
        rsum_std=("rsum", "std"),
        rsum_min=("rsum", "min"),
        rsum_max=("rsum", "max"),
        i2t_r1_mean=("i2t_r1", "mean"),
        t2i_r1_mean=("t2i_r1", "mean"),
        score_latency_ms_median=("score_latency_ms", "median"),
    )
    return summary.sort_values("rsum_mean", ascending=False).reset_index().round(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    frames = []
    for path in args.csv:
        frame = pd.read_csv(path)
        frame = frame[frame["state"] == "COMPLETE"].copy()
        frame["source"] = path.parent.name
        if "aligner_converged" in frame.columns:  # a truncated solver is named as such
            frame["aligner"] = [solver_label(str(a), row) for a, row in zip(frame["aligner"], frame.to_dict("records"))]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    table["seed"] = table["seed"].astype("Int64")
    objectives = table[["rsum", "score_latency_ms", "score_peak_mem_mb"]].to_numpy(dtype=float)
    table["pareto"] = np.where(pareto_mask(objectives, ["maximize", "minimize", "minimize"]), "*", "")
    table = table.sort_values("rsum", ascending=False).round(
        {c: 1 for c in COLUMNS if c not in ("aligner", "seed", "source")}
    )
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv", index=False)
    markdown = table.to_markdown(index=False)
    (args.out / "table.md").write_text(markdown + "\n")
    plot_tradeoff(
        table.assign(pareto=table["pareto"] == "*", state="COMPLETE"),
        "score_latency_ms",
        "rsum",
        "aligner",
        args.out / "tradeoff.png",
        title="Flickr8k 1K test: RSUM vs scoring latency (CPU)",
    )
    print(markdown)
    print(f"written: {args.out}/table.md, table.csv, tradeoff.png")
    if table["aligner"].duplicated().any():
        seeds = seed_summary(table)
        seeds.to_csv(args.out / "seeds.csv", index=False)
        (args.out / "seeds.md").write_text(seeds.to_markdown(index=False) + "\n")
        print(seeds.to_markdown(index=False))
        print(f"written: {args.out}/seeds.md, seeds.csv")


if __name__ == "__main__":
    main()

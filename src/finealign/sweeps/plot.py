"""Recall vs cost scatter of a sweep: every complete trial, the Pareto front marked and joined,
points labelled by their aligner (or the first swept component)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_tradeoff(frame: pd.DataFrame, x: str, y: str, label: str | None, path: Path, title: str = "") -> Path | None:
    """Write the PNG and return its path; None when the trials lack the x or y metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame["state"] == "COMPLETE"]
    if done.empty or x not in done or y not in done or done[[x, y]].isna().all().any():
        return None
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    rest, front = done[~done["pareto"]], done[done["pareto"]].sort_values(x)
    ax.scatter(rest[x], rest[y], c="tab:gray", alpha=0.7, label="trial")
    ax.scatter(front[x], front[y], c="tab:red", s=60, zorder=3, label="Pareto front")
    ax.plot(front[x], front[y], c="tab:red", lw=1, zorder=2, drawstyle="steps-post")
    for _, row in done.iterrows():
        text = str(row[label]) if label and label in row else f"#{row['trial']}"
        ax.annotate(text, (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    xs = done[x].dropna()
    if len(xs) and (xs > 0).all() and xs.max() / xs.min() > 100:
        ax.set_xscale("log")  # latencies of a global dot product and of OT differ by orders of magnitude
    return finish_figure(fig, ax, x, y, title, path)


def finish_figure(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid, legend; save the PNG and close the figure (shared by the sweep and protocol plots)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Save and close; written beside and renamed, so that several workers writing one report
    never leave a half-written PNG."""
    import os

    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path

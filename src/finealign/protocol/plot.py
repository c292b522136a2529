"""Accuracy against cost for a protocol: RSUM mean with its seed std (vertical bars), per-query
scoring latency median with its IQR (horizontal bars), the Pareto front of the medians."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from finealign.sweeps.plot import finish_figure


def plot_protocol(frame: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Write the PNG and return its path; None when no method has both numbers yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[np.isfinite(frame["rsum_mean"].astype(float)) & np.isfinite(frame["cost_ms_per_query"].astype(float))]
    if done.empty:
        return None
    x, y = done["cost_ms_per_query"].astype(float), done["rsum_mean"].astype(float)
    xerr = np.vstack([x - done["cost_ms_per_query_q25"].astype(float), done["cost_ms_per_query_q75"].astype(float) - x])
    yerr = done["rsum_std"].astype(float).fillna(0.0)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ax.errorbar(x, y, xerr=np.clip(xerr, 0, None), yerr=yerr, fmt="o", c="tab:gray", ecolor="tab:gray",
                capsize=3, label="method (bars: seed std, latency IQR)")  # fmt: skip
    front = done[done["pareto"]].sort_values("cost_ms_per_query")
    ax.plot(front["cost_ms_per_query"], front["rsum_mean"], c="tab:red", lw=1, drawstyle="steps-post",
            marker="o", label="Pareto front (medians)")  # fmt: skip
    for _, row in done.iterrows():
        ax.annotate(str(row["label"]), (row["cost_ms_per_query"], row["rsum_mean"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)  # fmt: skip
    if (x > 0).all() and x.max() / x.min() > 30:
        ax.set_xscale("log")
    return finish_figure(fig, ax, "scoring latency per image query, ms (median, IQR)",
                         "test RSUM (mean ± std over seeds)", title, path)  # fmt: skip

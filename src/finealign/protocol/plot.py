"""Accuracy against cost for a protocol: RSUM mean with its seed std (vertical bars), per-query
scoring latency median with its IQR (horizontal bars), the Pareto front of the medians."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from finealign.sweeps.plot import finish_figure, save_figure


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
                capsize=3, zorder=2, label="method (bars: seed std, latency IQR)")  # fmt: skip
    front = done[done["pareto"]].sort_values("cost_ms_per_query")
    # above the grey markers and their bars: the legend's red points must be the ones seen
    ax.plot(front["cost_ms_per_query"], front["rsum_mean"], c="tab:red", lw=1.2, drawstyle="steps-post",
            marker="o", ms=7, mec="darkred", zorder=3, label="Pareto front (medians)")  # fmt: skip
    if (x > 0).all() and x.max() / x.min() > 30:
        ax.set_xscale("log")
    label_points(ax, x.to_numpy(), y.to_numpy(), [str(v) for v in done["label"]])
    return finish_figure(fig, ax, "scoring latency per image query, ms (median, IQR)",
                         "test RSUM (mean ± std over seeds)", title, path)  # fmt: skip


# Where a point's name may go: beside it to the upper right, lower right, upper left, lower left.
LABEL_SIDES = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"), (-4, -3, "right", "top"))


def label_points(ax, x: np.ndarray, y: np.ndarray, labels: list[str], fontsize: float = 7) -> None:
    """Each point's name beside it, on the first side (LABEL_SIDES) where it overlaps no name
    placed before it nor another point (sizes estimated in axes fractions: the figure's layout may
    still change a little); a white backing keeps a name readable over a line."""
    ax.autoscale_view()
    fig = ax.figure
    box = ax.get_position()
    width_px, height_px = box.width * fig.get_figwidth() * fig.dpi, box.height * fig.get_figheight() * fig.dpi
    pt_x, pt_y = fig.dpi / 72 / width_px, fig.dpi / 72 / height_px  # one point in axes fractions
    to_axes = ax.transData + ax.transAxes.inverted()
    points = to_axes.transform(np.column_stack([x, y]))
    placed: list[tuple[float, float, float, float]] = []
    marker = (4 * pt_x, 4 * pt_y)

    def clear(r: tuple[float, float, float, float], own: int) -> bool:
        boxes = placed + [(px - marker[0], py - marker[1], px + marker[0], py + marker[1])
                          for k, (px, py) in enumerate(points) if k != own]  # fmt: skip
        return all(r[2] <= b[0] or b[2] <= r[0] or r[3] <= b[1] or b[3] <= r[1] for b in boxes)

    for k in np.argsort(points[:, 0], kind="stable"):
        px, py = points[k]
        w, h = 0.6 * fontsize * len(labels[k]) * pt_x, 1.2 * fontsize * pt_y
        rects = []
        for dx, dy, ha, va in LABEL_SIDES:
            left = px + dx * pt_x - (w if ha == "right" else 0)
            bottom = py + dy * pt_y - (h if va == "top" else 0)
            rects.append((left, bottom, left + w, bottom + h))
        side = next((i for i, r in enumerate(rects) if clear(r, int(k))), 0)
        dx, dy, ha, va = LABEL_SIDES[side]
        placed.append(rects[side])
        ax.annotate(labels[k], (x[k], y[k]), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                    fontsize=fontsize, zorder=4, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                                       "alpha": 0.75})  # fmt: skip


def plot_forest(frame: pd.DataFrame, path: Path, reference: str, title: str = "") -> Path | None:
    """The ablation's forest plot: one row per factor level × method; left, the change of test
    RSUM against the method's base level; right, the difference to the reference at that level;
    each a point with its paired-bootstrap interval, a vertical line at 0. None when nothing is
    comparable yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(frame):
        return None
    # the reference's base rows compare nothing; "= base" rows are the base runs again
    shown = frame[(~frame["base_level"] | (frame["method"] != reference)) & ~frame["same_as_base"]]
    shown = shown.reset_index(drop=True)
    panels = (("base_d_rsum", "Δ test RSUM vs the method's base level"), ("ref_d_rsum", f"Δ test RSUM vs {reference}"))
    if not any(np.isfinite(shown[key].astype(float)).any() for key, _ in panels):
        return None
    labels = [f"{r['factor']}={r['level']}  {r['method']}" for _, r in shown.iterrows()]
    y = np.arange(len(shown))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.32 * len(shown)), dpi=120, sharey=True)
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        est = shown[key].astype(float).to_numpy()
        low, high = shown[f"{key}_low"].astype(float).to_numpy(), shown[f"{key}_high"].astype(float).to_numpy()
        ci = np.isfinite(low) & np.isfinite(high)
        sig = shown[f"{key}_significant"].astype(bool).to_numpy()
        err = np.vstack([est - low, high - est])[:, ci]
        ax.errorbar(est[ci], y[ci], xerr=np.clip(err, 0, None), fmt="none", ecolor="tab:gray", capsize=3)
        for mask, color, label in ((ci & sig, "tab:red", "CI excludes 0"), (ci & ~sig, "tab:blue", "CI holds 0"),
                                   (~ci & np.isfinite(est), "white", "no CI (< 2 seeds)")):  # fmt: skip
            if mask.any():
                ax.scatter(est[mask], y[mask], c=color, edgecolors="black", zorder=3, s=28, label=label)
        ax.axvline(0.0, color="black", lw=1)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    # a thin line between factors
    factors = shown["factor"].tolist()
    for i in range(1, len(factors)):
        if factors[i] != factors[i - 1]:
            for ax in axes:
                ax.axhline(y[i] + 0.5, color="gray", lw=0.5, ls="--")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    handles = {h.get_label(): h for ax in axes for h in ax.collections if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="upper right", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the title and legend row
    return save_figure(fig, path)


def plot_tuning(curves: dict[str, list[tuple[int, float]]], path: Path, metric: str, title: str = "") -> Path | None:
    """Best-so-far validation metric against trial number, one line per tuning study: a curve still
    rising at its last trial says the budget was too small to trust the tuned config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for label, points in curves.items():
        numbers, values = zip(*points, strict=True)
        ax.plot(np.asarray(numbers) + 1, np.maximum.accumulate(values), marker="o", ms=3, lw=1.2,
                ls="-" if " " not in label else "--", drawstyle="steps-post", label=label)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return finish_figure(fig, ax, "trial (in order of number)", f"best validation {metric} so far", title, path)

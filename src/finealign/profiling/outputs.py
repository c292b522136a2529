"""Tables (CSV + Markdown) and plots (PNG) of profiling results.

pandas and matplotlib are imported inside the functions, so `import finealign.profiling` stays
light for scripts that only time things.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finealign.errors import ConfigError, DataError

# The columns a reader wants first; any others follow.
LEAD_COLUMNS = [
    "aligner",
    "device",
    "dtype",
    "nv",
    "nt",
    "lv",
    "lt",
    "dim",
    "mode",
    "latency_ms",
    "latency_iqr_ms",
    "latency_min_ms",
    "latency_max_ms",
    "peak_mem_mib",
    "gflop",
    "achieved_tflops",
    "frac_of_matmul_peak",
    "error",
]


def to_frame(rows: Sequence[dict[str, Any]]):
    import pandas as pd  # noqa: PLC0415

    df = pd.DataFrame(list(rows))
    lead = [c for c in LEAD_COLUMNS if c in df.columns]
    return df[lead + [c for c in df.columns if c not in lead]]


def markdown(df, floatfmt: str = ".4g") -> str:
    try:
        return df.to_markdown(index=False, floatfmt=floatfmt)
    except ImportError:  # tabulate missing: a plain aligned table is still readable
        return df.to_string(index=False)


def write_table(rows_or_df, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.csv` and `<stem>.md` into out_dir; return both paths."""
    df = rows_or_df if hasattr(rows_or_df, "to_csv") else to_frame(rows_or_df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    df.to_csv(csv_path, index=False)
    md_path.write_text(markdown(df) + "\n", encoding="utf-8")
    return csv_path, md_path


def summary_columns(df):
    """The columns worth printing on a terminal."""
    keep = [c for c in LEAD_COLUMNS if c in df.columns and c not in ("device",)]
    if "error" in df.columns and not df["error"].astype(bool).any():
        keep = [c for c in keep if c != "error"]
    return df[keep]


def plot_scaling(rows, path: str | Path, axis: str = "n", metric: str = "latency_ms") -> Path:
    """Cost vs the scaled axis, one line per aligner, log-log axes."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    df = rows if hasattr(rows, "columns") else to_frame(rows)
    df = df[(df["axis"] == axis) & (df["error"].fillna("") == "")] if "error" in df else df[df["axis"] == axis]
    if df.empty:
        raise ConfigError(f"no successful rows on scaling axis {axis!r} to plot")
    label = {
        "n": "gallery size N (N images × 5N captions)",
        "tokens": "visual tokens per item",
        "dim": "embedding dim d",
    }.get(axis, axis)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for aligner, group in df.groupby("aligner"):
        group = group.sort_values("x")
        (line,) = ax.plot(group["x"], group[metric], marker="o", label=aligner)
        if metric == "latency_ms" and {"latency_q25_ms", "latency_q75_ms"} <= set(group.columns):
            # the interquartile band: how much to trust each point
            ax.fill_between(
                group["x"],
                group["latency_q25_ms"],
                group["latency_q75_ms"],
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = sorted(df["x"].unique())
    ax.set_xticks(xs, [str(int(x)) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(label)
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_eval_results(source) -> list[dict[str, Any]]:
    """Evaluation rows (each with `aligner` and a recall metric such as `rsum`) from a CSV or JSON
    file (a list of rows, or {"rows": [...]}) or an in-memory list of dicts."""
    if isinstance(source, (list, tuple)):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.is_file():
        raise DataError(f"evaluation results file not found: {path}")
    if path.suffix.lower() == ".csv":
        import pandas as pd  # noqa: PLC0415

        return pd.read_csv(path).to_dict("records")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"evaluation results {path} are not valid JSON: {exc}") from exc
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError(f"evaluation results {path} must be a list of rows or {{'rows': [...]}}")
    return rows


def join_eval(eval_rows, profile_rows, metric: str = "rsum"):
    """Inner join of evaluation and profile rows on `aligner` (best recall per aligner kept)."""
    import pandas as pd  # noqa: PLC0415

    ev = pd.DataFrame(load_eval_results(eval_rows))
    prof = profile_rows if hasattr(profile_rows, "columns") else to_frame(profile_rows)
    for frame, what in ((ev, "evaluation results"), (prof, "profile table")):
        if "aligner" not in frame.columns:
            raise DataError(f"{what} have no 'aligner' column (columns: {', '.join(frame.columns)})")
    if metric not in ev.columns:
        raise DataError(f"evaluation results have no {metric!r} column (columns: {', '.join(ev.columns)})")
    if "error" in prof.columns:
        prof = prof[prof["error"].fillna("") == ""]
    ev = ev.sort_values(metric, ascending=False).drop_duplicates("aligner")
    joined = ev[["aligner", metric]].merge(prof[["aligner", "latency_ms"]], on="aligner", how="inner")
    if joined.empty:
        raise DataError(
            f"no aligner appears in both tables: evaluation has {sorted(ev['aligner'])}, "
            f"profile has {sorted(prof['aligner'])}"
        )
    return joined


def plot_recall_vs_latency(eval_rows, profile_rows, path: str | Path, metric: str = "rsum") -> Path:
    """Recall (e.g. R-sum) against latency per aligner: the cost/accuracy trade-off in one plot."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    joined = join_eval(eval_rows, profile_rows, metric)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(joined["latency_ms"], joined[metric])
    for _, r in joined.iterrows():
        ax.annotate(r["aligner"], (r["latency_ms"], r[metric]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, median)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def header(env: dict[str, str]) -> str:
    return " | ".join(f"{k}: {v}" for k, v in env.items())

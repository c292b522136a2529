"""A protocol as one tidy table: one row per method — status, tuning, test metrics over seeds,
paired bootstrap intervals against the reference, costs with their spread.

Built only from what storage and the run directories hold, so `finealign bench` and a later
`finealign report` give the same table.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from finealign.engine.results import solver_label
from finealign.protocol.run import MethodOutcome
from finealign.protocol.spec import ProtocolSpec
from finealign.protocol.stats import COMPARED, QueryRanks, mean_std, paired_bootstrap
from finealign.tables import to_booktabs

MEAN_METRICS = ("rsum", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "train_time_s")
# Batched cost (cost_ms_per_query, cost_vs_*: a batch of cost_rows queries against the prepared
# gallery), single-query latency (cost_latency_*), one-off preparation (cost_prepare_ms): see
# profiling.scoring_cost. Results written before 2026-12-03 lack the latency and preparation keys
# (read back as NaN, shown "–") and timed their batch with the gallery-side work redone per call.
COST_KEYS = (
    "cost_ms_per_query", "cost_ms_per_query_q25", "cost_ms_per_query_q75", "cost_vs_global", "cost_vs_global_q25",
    "cost_vs_global_q75", "cost_vs_floor", "cost_vs_floor_q25", "cost_vs_floor_q75", "cost_queries_per_s",
    "cost_latency_ms", "cost_latency_ms_q25", "cost_latency_ms_q75", "cost_latency_vs_floor",
    "cost_latency_vs_floor_q25", "cost_latency_vs_floor_q75", "cost_prepare_ms", "cost_prepare_ms_q25",
    "cost_prepare_ms_q75", "cost_rows", "cost_repeats", "cost_threads", "score_peak_mem_mb",
)  # fmt: skip


def _ranks(outcome: MethodOutcome) -> dict[int, QueryRanks]:
    return {
        f.seed: QueryRanks.load(f.directory / "ranks.npz")
        for f in outcome.finals
        if f.metrics is not None and (f.directory / "ranks.npz").is_file()
    }


def _aligner(spec: ProtocolSpec, outcome: MethodOutcome) -> str:
    """The method's aligner: as its first finished run recorded it (results.json labels), else the
    `aligner=` among the method's overrides; "" when neither says."""
    for final in outcome.finals:
        path = final.directory / "results.json"
        if final.metrics is not None and path.is_file():
            name = json.loads(path.read_text()).get("labels", {}).get("aligner")
            if name:
                return str(name)
    method = next((m for m in spec.methods if m.name == outcome.name), None)
    given = [o.split("=", 1)[1] for o in (method.overrides if method else ()) if o.startswith("aligner=")]
    return given[-1] if given else ""


def protocol_frame(spec: ProtocolSpec, outcomes: list[MethodOutcome]) -> pd.DataFrame:
    by_name = {o.name: o for o in outcomes}
    ref_ranks = _ranks(by_name[spec.reference]) if spec.reference in by_name else {}
    rows = []
    for o in outcomes:
        done = [f.metrics for f in o.finals if f.metrics is not None]
        row: dict[str, Any] = {
            "method": o.name,
            "label": solver_label(o.name, done[0]) if done else o.name,
            "aligner": _aligner(spec, o),
            "status": "ok" if o.failure is None else o.failure[:200],
            "trials": o.tune.complete,
            "trials_failed": o.tune.failed,
            "budget": spec.tune.n_trials,
            "best_val": o.tune.best_value,
            "best_params": json.dumps(o.tune.best_params, sort_keys=True) if o.tune.best_params else "",
            "seeds_done": len(done),
            "seeds": len(spec.seeds),
        }
        for metric in MEAN_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([m.get(metric) for m in done])
        first = next((f.metrics for f in o.finals[:1] if f.metrics is not None), None) or {}
        row.update({key: first.get(key, math.nan) for key in COST_KEYS})
        ranks = _ranks(o)
        for metric in COMPARED:
            if o.name == spec.reference or not ranks or not ref_ranks:
                interval = None
            else:
                b = spec.bootstrap
                interval = paired_bootstrap(ranks, ref_ranks, metric, resamples=b.resamples,
                                            confidence=b.confidence, seed=b.seed)  # fmt: skip
            row[f"d_{metric}"] = interval.estimate if interval else math.nan
            row[f"d_{metric}_low"] = interval.low if interval and interval.available else math.nan
            row[f"d_{metric}_high"] = interval.high if interval and interval.available else math.nan
            row[f"d_{metric}_significant"] = bool(interval and interval.significant)
            row[f"d_{metric}_note"] = (
                "reference" if o.name == spec.reference else (interval.reason if interval else "no ranks")
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["pareto"] = _pareto(frame)
    return frame


def _pareto(frame: pd.DataFrame) -> list[bool]:
    from finealign.sweeps.results import pareto_mask

    values = frame[["rsum_mean", "cost_ms_per_query"]].to_numpy(float)
    ok = np.isfinite(values).all(1)
    mask = np.zeros(len(frame), dtype=bool)
    if ok.any():
        mask[ok] = pareto_mask(values[ok], ["maximize", "minimize"])  # medians of cost, means of RSUM
    return mask.tolist()


# -- display ----------------------------------------------------------------------------------
def _num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pm(mean: float, std: float, pm: str) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.1f}{pm}{_num(std)}" if math.isfinite(std) else f"{mean:.1f}{pm}n/a"


def _diff(row: pd.Series, metric: str, dash: str, star: str) -> str:
    if row[f"d_{metric}_note"] == "reference":
        return "(reference)"
    est = row[f"d_{metric}"]
    if not math.isfinite(est):
        return "–"
    if not math.isfinite(row[f"d_{metric}_low"]):
        return f"{est:+.1f} (CI n/a)"
    mark = star if row[f"d_{metric}_significant"] else ""
    return f"{est:+.1f} [{row[f'd_{metric}_low']:+.1f}, {row[f'd_{metric}_high']:+.1f}]{mark}"


def _spread(row: pd.Series, key: str, digits: int, dash: str) -> str:
    med, lo, hi = row.get(key, math.nan), row.get(f"{key}_q25", math.nan), row.get(f"{key}_q75", math.nan)
    if not math.isfinite(med):
        return "–"
    if key == "cost_vs_global" and row.get("aligner") == "global":
        # global retrieval *is* the reference operation (the pooled-vector matmul); the measured
        # ratio of the global aligner only says what its per-call wrapper adds (kept in protocol.csv)
        return "–"
    return f"{_sig(med, digits)} [{_sig(lo, digits)}{dash}{_sig(hi, digits)}]"


def _sig(value: float, digits: int) -> str:
    """`digits` significant digits, never in exponent form (1070, not 1.07e+03)."""
    return f"{value:.0f}" if abs(value) >= 10 ** (digits - 1) else f"{value:.{digits}g}"


def display_frame(frame: pd.DataFrame, reference: str, *, latex: bool = False) -> pd.DataFrame:
    """The printed table: strings with mean ± std, intervals with a significance mark, medians
    with their IQR."""
    pm, dash, star = (r" $\pm$ ", "--", r"$^{*}$") if latex else (" ± ", "–", " *")
    out = pd.DataFrame({
        "method": frame["label"],
        "trials": [f"{t}/{b}" for t, b in zip(frame["trials"], frame["budget"], strict=True)],
        "seeds": [f"{d}/{s}" for d, s in zip(frame["seeds_done"], frame["seeds"], strict=True)],
        "RSUM": [_pm(m, s, pm) for m, s in zip(frame["rsum_mean"], frame["rsum_std"], strict=True)],
        "i2t R@1": [_pm(m, s, pm) for m, s in zip(frame["i2t_r1_mean"], frame["i2t_r1_std"], strict=True)],
        "t2i R@1": [_pm(m, s, pm) for m, s in zip(frame["t2i_r1_mean"], frame["t2i_r1_std"], strict=True)],
        f"ΔRSUM vs {reference}" if not latex else f"$\\Delta$RSUM vs {reference}": [
            _diff(r, "rsum", dash, star) for _, r in frame.iterrows()],
        "Δi2t R@1" if not latex else r"$\Delta$i2t R@1": [_diff(r, "i2t_r1", dash, star) for _, r in frame.iterrows()],
        "Δt2i R@1" if not latex else r"$\Delta$t2i R@1": [_diff(r, "t2i_r1", dash, star) for _, r in frame.iterrows()],
        "ms/query [IQR]": [_spread(r, "cost_ms_per_query", 3, dash) for _, r in frame.iterrows()],
        "× global": [_spread(r, "cost_vs_global", 3, dash) for _, r in frame.iterrows()],
        "× floor": [_spread(r, "cost_vs_floor", 3, dash) for _, r in frame.iterrows()],
        "1-query ms [IQR]": [_spread(r, "cost_latency_ms", 3, dash) for _, r in frame.iterrows()],
        "1-query × floor": [_spread(r, "cost_latency_vs_floor", 3, dash) for _, r in frame.iterrows()],
        "prepare ms": [_spread(r, "cost_prepare_ms", 3, dash) for _, r in frame.iterrows()],
        "peak MiB": [_num(v) for v in frame["score_peak_mem_mb"]],
        "status": frame["status"],
    })  # fmt: skip
    if latex:
        out = out.rename(columns={"× global": r"$\times$ global", "× floor": r"$\times$ floor",
                                  "1-query × floor": r"1-query $\times$ floor"})  # fmt: skip
    return out


def to_markdown(frame: pd.DataFrame, reference: str) -> str:
    return display_frame(frame, reference).to_markdown(index=False) if len(frame) else "(no methods)"


def _short(row: pd.Series) -> bool:
    """A method short of its tuning budget or its seeds (marked † in the paper's tables)."""
    return bool(row["trials"] < row["budget"] or row["seeds_done"] < row["seeds"])


def _paper_diff(row: pd.Series, metric: str) -> str:
    """ΔRSUM as a paper prints it: estimate, interval without repeated signs, * when it excludes 0."""
    if row[f"d_{metric}_note"] == "reference":
        return "ref."
    est, low, high = row[f"d_{metric}"], row[f"d_{metric}_low"], row[f"d_{metric}_high"]
    if not math.isfinite(est):
        return "--"
    text = f"{est:+.1f}" if not math.isfinite(low) else f"{est:+.1f} [{low:.1f}, {high:.1f}]"
    text = text.replace("-", "$-$")  # a minus sign, not a hyphen
    return text + (r"$^{*}$" if math.isfinite(low) and row[f"d_{metric}_significant"] else "")


def paper_frames(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's two tables, five columns each, sized to fit a page as they are: accuracy (test
    RSUM mean ± std over seeds, R@1 both ways as means, ΔRSUM against the reference with its
    interval) and cost (µs per image query, median [IQR]; medians of the ratios to global retrieval
    and to the all-token-pairs floor; scoring peak memory). What they leave out — R@1's spread,
    the per-direction Δ, the ratios' IQRs, the trial and seed counts — is in protocol.md and
    protocol.csv; a method short of its budget or seeds is marked † (`_short`)."""
    pm = r" $\pm$ "
    methods = [str(r["label"]) + (r"$^{\dagger}$" if _short(r) else "") for _, r in frame.iterrows()]
    micro = frame.assign(**{f"cost_us{q}": 1000.0 * frame[f"cost_ms_per_query{q}"] for q in ("", "_q25", "_q75")})
    accuracy = pd.DataFrame({
        "Method": methods,
        "RSUM": [_pm(m, s, pm) for m, s in zip(frame["rsum_mean"], frame["rsum_std"], strict=True)],
        "i2t R@1": [_num(v) for v in frame["i2t_r1_mean"]],
        "t2i R@1": [_num(v) for v in frame["t2i_r1_mean"]],
        r"$\Delta$RSUM [CI]": [_paper_diff(r, "rsum") for _, r in frame.iterrows()],
    })  # fmt: skip
    cost = pd.DataFrame({
        "Method": methods,
        r"$\mu$s/query [IQR]": [_spread(r, "cost_us", 3, "--") for _, r in micro.iterrows()],
        r"$\times$ global": [_ratio(r, "cost_vs_global") for _, r in frame.iterrows()],
        r"$\times$ floor": [_ratio(r, "cost_vs_floor") for _, r in frame.iterrows()],
        "peak MiB": [_num(v) for v in frame["score_peak_mem_mb"]],
    })  # fmt: skip
    return accuracy, cost


def _ratio(row: pd.Series, key: str) -> str:
    if not math.isfinite(row[key]) or (key == "cost_vs_global" and row.get("aligner") == "global"):
        return "--"  # global retrieval is the reference operation itself (see _spread)
    return _sig(row[key], 3)


def to_latex(frame: pd.DataFrame, reference: str, caption: str = "", study: str = "protocol") -> str:
    """Two booktabs tables for a paper (paper_frames): accuracy, then cost. Each fits a page's
    width (a single-column article's 345 pt) as it is, and is shrunk to the line only where it
    would not fit (a two-column paper's column, long method names). Needs
    \\usepackage{booktabs,graphicx}."""
    accuracy, cost = paper_frames(frame)
    label = "".join(c if c.isalnum() else "-" for c in study)
    marked = any(_short(r) for _, r in frame.iterrows())
    dagger = " $^{\\dagger}$ short of its tuning budget or seeds (protocol.md)." if marked else ""
    return (
        "% needs \\usepackage{booktabs} and \\usepackage{graphicx}\n"
        + to_booktabs(accuracy, caption=caption + dagger, label=f"tab:{label}-accuracy", fit=True, colsep_pt=4)
        + "\n"
        + to_booktabs(cost, caption=COST_CAPTION + dagger, label=f"tab:{label}-cost", fit=True, colsep_pt=4)
    )


COST_CAPTION = (
    "Scoring cost per image query: µs, median [IQR] over the first seed's repeats; × global / × floor: median "
    "ratio to global retrieval (the pooled-vector matmul) / to the all-token-pairs BLAS product, each timed "
    "alongside (– for global itself); peak MiB: scoring memory."
)

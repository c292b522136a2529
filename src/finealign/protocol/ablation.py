"""The ablation table: one row per factor × level × method — seeds done, test metrics over seeds,
the paired-bootstrap change against the method's base level, the change against the reference
method at the same level, and whether the verdict against the reference changes at that level.

Built from storage and run directories only (like protocol/table.py), so `finealign bench` and
`finealign report` give the same table. The CSV holds every number (and every cost key of
`table.COST_KEYS`, first seed's run); the printed table keeps RSUM for the changes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from finealign.protocol.cells import Cell, cell_of, tuning_cell
from finealign.protocol.run import MethodOutcome
from finealign.protocol.spec import ProtocolSpec
from finealign.protocol.stats import COMPARED, Interval, QueryRanks, mean_std, paired_bootstrap
from finealign.protocol.table import COST_KEYS, MEAN_METRICS, _num, _pm, _spread
from finealign.tables import to_booktabs

#: what the interval of a method's difference to the reference says
AHEAD, BEHIND, TIE, NA = "ahead", "behind", "tie", "n/a"


def side(low: float, high: float) -> str:
    """ahead / behind: the interval [low, high] of a difference excludes 0 on that side; tie: it
    holds 0; n/a: no interval (NaN bounds)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return NA
    return AHEAD if low > 0 else BEHIND if high < 0 else TIE


def _ranks(outcome: MethodOutcome | None) -> dict[int, QueryRanks]:
    if outcome is None:
        return {}
    return {
        f.seed: QueryRanks.load(f.directory / "ranks.npz")
        for f in outcome.finals
        if f.metrics is not None and (f.directory / "ranks.npz").is_file()
    }


def _put(row: dict[str, Any], prefix: str, metric: str, interval: Interval | None, note: str) -> None:
    row[f"{prefix}_{metric}"] = interval.estimate if interval else math.nan
    row[f"{prefix}_{metric}_low"] = interval.low if interval and interval.available else math.nan
    row[f"{prefix}_{metric}_high"] = interval.high if interval and interval.available else math.nan
    row[f"{prefix}_{metric}_significant"] = bool(interval and interval.significant)
    row[f"{prefix}_{metric}_note"] = note or (interval.reason if interval else "")


def ablation_frame(spec: ProtocolSpec, outcomes: list[MethodOutcome]) -> pd.DataFrame:
    """outcomes: every cell's (protocol.run.stored_cell_outcomes)."""
    by_cell = {o.cell or Cell(o.name): o for o in outcomes}
    ranks: dict[Cell, dict[int, QueryRanks]] = {}

    def ranks_of(cell: Cell) -> dict[int, QueryRanks]:
        if cell not in ranks:
            ranks[cell] = _ranks(by_cell.get(cell))
        return ranks[cell]

    b = spec.bootstrap

    def compare(a: Cell, ref: Cell, metric: str) -> Interval | None:
        ra, rr = ranks_of(a), ranks_of(ref)
        if not ra or not rr:
            return None
        return paired_bootstrap(ra, rr, metric, resamples=b.resamples, confidence=b.confidence, seed=b.seed)

    rows = []
    for factor in spec.factors:
        ref_runs = factor.runs(spec.reference)
        for level in factor.levels:
            for method in (m.name for m in spec.methods if factor.runs(m.name)):
                cell = cell_of(spec, method, factor.name, level.name)
                is_base = level.name == factor.base.name
                o = by_cell.get(cell)
                done = [f.metrics for f in o.finals if f.metrics is not None] if o else []
                tune = o.tune if o else None
                row: dict[str, Any] = {
                    "factor": factor.name, "level": level.name, "method": method, "base_level": is_base,
                    "same_as_base": cell.is_base and not is_base, "retuned": factor.retune and not cell.is_base,
                    "status": "ok" if o and o.failure is None else (o.failure[:200] if o and o.failure else "not run"),
                    "tuned_by": tuning_cell(spec, cell).label,
                    "best_params": json.dumps(tune.best_params, sort_keys=True) if tune and tune.best_params else "",
                    "seeds_done": len(done), "seeds": len(spec.seeds),
                }  # fmt: skip
                for metric in MEAN_METRICS:
                    row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([m.get(metric) for m in done])
                first = next((f.metrics for f in (o.finals[:1] if o else []) if f.metrics is not None), None) or {}
                row.update({key: first.get(key, math.nan) for key in COST_KEYS})
                for metric in COMPARED:
                    if is_base:
                        _put(row, "base_d", metric, None, "base")
                    elif cell.is_base:  # the level changes nothing for this method: its base runs
                        _put(row, "base_d", metric, Interval(0.0, None, None, len(done)), "= base")
                    else:
                        _put(row, "base_d", metric, compare(cell, Cell(method), metric), "" if done else "no runs")
                    if method == spec.reference:
                        _put(row, "ref_d", metric, None, "reference")
                    elif not ref_runs:
                        _put(row, "ref_d", metric, None, f"{spec.reference} does not run {factor.name}")
                    else:
                        ref_cell = cell_of(spec, spec.reference, factor.name, level.name)
                        _put(row, "ref_d", metric, compare(cell, ref_cell, metric), "")
                rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["verdict"] = _verdicts(frame, spec.reference)
    return frame


def _verdicts(frame: pd.DataFrame, reference: str) -> list[str]:
    """Per row: the verdict against the reference at this level, and at the base level when it
    differs ("behind → tie")."""

    def of(row: pd.Series) -> str:
        return "(reference)" if row["method"] == reference else side(row["ref_d_rsum_low"], row["ref_d_rsum_high"])

    at = {(r["factor"], r["level"], r["method"]): of(r) for _, r in frame.iterrows()}
    base_level = {r["factor"]: r["level"] for _, r in frame.iterrows() if r["base_level"]}
    out = []
    for _, r in frame.iterrows():
        now = at[(r["factor"], r["level"], r["method"])]
        before = at.get((r["factor"], base_level.get(r["factor"]), r["method"]), NA)
        out.append(now if r["base_level"] or now == before or r["method"] == reference else f"{before} → {now}")
    return out


# -- display ----------------------------------------------------------------------------------
def _delta(row: pd.Series, prefix: str, metric: str, star: str) -> str:
    note = row[f"{prefix}_{metric}_note"]
    if note in ("base", "reference"):
        return f"({note})"
    if note == "= base":
        return "= base"
    est = row[f"{prefix}_{metric}"]
    if not math.isfinite(est):
        return note or "–"
    if not math.isfinite(row[f"{prefix}_{metric}_low"]):
        return f"{est:+.1f} (CI n/a)"
    mark = star if row[f"{prefix}_{metric}_significant"] else ""
    return f"{est:+.1f} [{row[f'{prefix}_{metric}_low']:+.1f}, {row[f'{prefix}_{metric}_high']:+.1f}]{mark}"


def display_frame(frame: pd.DataFrame, reference: str, *, latex: bool = False) -> pd.DataFrame:
    pm, dash, star = (r" $\pm$ ", "--", r"$^{*}$") if latex else (" ± ", "–", " *")
    delta = r"$\Delta$" if latex else "Δ"
    rows = list(frame.iterrows())
    return pd.DataFrame({
        "factor": frame["factor"], "level": frame["level"], "method": frame["method"],
        "seeds": [f"{d}/{s}" for d, s in zip(frame["seeds_done"], frame["seeds"], strict=True)],
        "RSUM": [_pm(r["rsum_mean"], r["rsum_std"], pm) for _, r in rows],
        "i2t R@1": [_pm(r["i2t_r1_mean"], r["i2t_r1_std"], pm) for _, r in rows],
        "t2i R@1": [_pm(r["t2i_r1_mean"], r["t2i_r1_std"], pm) for _, r in rows],
        f"{delta}RSUM vs base": [_delta(r, "base_d", "rsum", star) for _, r in rows],
        f"{delta}RSUM vs {reference}": [_delta(r, "ref_d", "rsum", star) for _, r in rows],
        f"vs {reference}": [r["verdict"].replace("→", r"$\to$") if latex else r["verdict"] for _, r in rows],
        "ms/query [IQR]": [_spread(r, "cost_ms_per_query", 3, dash) for _, r in rows],
        "status": frame["status"],
    })  # fmt: skip


def to_markdown(frame: pd.DataFrame, reference: str) -> str:
    """One table per factor."""
    if not len(frame):
        return "(no factors)"
    shown = display_frame(frame, reference)
    parts = []
    for factor in dict.fromkeys(frame["factor"]):
        part = shown[shown["factor"] == factor].drop(columns=["factor"])
        parts.append(f"### Factor {factor}\n\n{part.to_markdown(index=False)}")
    return "\n\n".join(parts)


def to_latex(frame: pd.DataFrame, reference: str, caption: str = "") -> str:
    return to_booktabs(display_frame(frame, reference, latex=True).drop(columns=["status"]), caption=caption)


def legend(spec: ProtocolSpec) -> str:
    b = spec.bootstrap
    retuned = [f.name for f in spec.factors if f.retune]
    return (
        f"Ablation of {spec.study}: each level's overrides on top of the method's tuned config "
        + (f"(re-tuned per level, same budget, for {', '.join(retuned)}) " if retuned else "")
        + f"retrained with seeds {list(spec.seeds)}, tested once; mean ± std over seeds. Δ vs base = paired "
        f"bootstrap {100 * b.confidence:.0f}% CI against the method's base level (the first level); Δ vs "
        f"{spec.reference} = the same against {spec.reference} at that level (* = excludes 0); 'vs {spec.reference}' "
        "= ahead / behind / tie from that CI, 'a → b' where it differs from the base level's; '= base': the level "
        f"changes nothing for that method (its base runs). {_num(float(b.resamples), 0)} resamples."
    )

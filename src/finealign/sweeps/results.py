"""A study as a table: one row per trial (params, metrics, state, seed, error), Pareto front marked.

Built only from what the storage holds (plus the sweep spec saved on the study), so that
`finealign sweep` and a later `finealign report` produce the same table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

from finealign.engine.results import solver_label
from finealign.sweeps.runner import ERROR_ATTR, METRICS_ATTR
from finealign.sweeps.storage import failure_attr
from finealign.sweeps.study import stored_spec


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """True for the rows no other row dominates (at least as good everywhere, better somewhere)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.zeros(len(values), dtype=bool)
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    costs = values * signs  # lower is better in every column
    no_worse = (costs[:, None, :] <= costs[None, :, :]).all(-1)  # [j, i]: j is no worse than i
    better = (costs[:, None, :] < costs[None, :, :]).any(-1)
    dominated = (no_worse & better).any(0)
    return ~dominated


def param_columns(spec: dict[str, Any]) -> list[str]:
    cols = list(spec["choices"])
    for options in spec["choices"].values():
        for params in options.values():
            cols += [p["name"] for p in params if p["name"] not in cols]
    cols += [p["name"] for p in spec["params"] if p["name"] not in cols]
    return cols


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    spec = stored_spec(study)
    objectives = [o["metric"] for o in spec["objectives"]]
    params = param_columns(spec)
    rows = []
    for t in study.get_trials(deepcopy=False):
        dead = study.user_attrs.get(failure_attr(t.number), {}) if t.state == optuna.trial.TrialState.FAIL else {}
        if t.state == optuna.trial.TrialState.FAIL and ERROR_ATTR not in t.user_attrs and dead.get("retried", True):
            continue  # left by a killed worker and re-queued: its retry is the row that counts
        metrics = t.user_attrs.get(METRICS_ATTR, {})
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({p: t.params.get(p) for p in params})
        row.update({m: metrics.get(m, _value(t, i)) for i, m in enumerate(objectives)})
        row.update({k: v for k, v in sorted(metrics.items()) if k not in row})
        duration = t.duration.total_seconds() if t.duration is not None else math.nan
        row.update({"seed": t.user_attrs.get("seed"), "duration_s": round(duration, 3)})
        row[ERROR_ATTR] = t.user_attrs.get(ERROR_ATTR) or t.user_attrs.get("pruned") or dead.get("reason", "")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_ordered_columns(rows, params, objectives))
    frame["pareto"] = False
    done = frame["state"] == "COMPLETE"
    if done.any():
        directions = [o["direction"] for o in spec["objectives"]]
        frame.loc[done, "pareto"] = pareto_mask(frame.loc[done, objectives].to_numpy(float), directions)
    return frame


def _value(t: optuna.trial.FrozenTrial, i: int) -> float | None:
    return t.values[i] if t.values is not None and i < len(t.values) else None


def _ordered_columns(rows: list[dict[str, Any]], params: list[str], objectives: list[str]) -> list[str]:
    head = ["trial", "state", *params, *objectives]
    tail = ["seed", "duration_s", ERROR_ATTR]
    middle = sorted({k for r in rows for k in r} - set(head) - set(tail))
    return head + middle + tail


def summary_frame(frame: pd.DataFrame, study: optuna.Study) -> pd.DataFrame:
    """The columns worth printing: params, objectives, the plot axes, state, front, error."""
    spec = stored_spec(study)
    keep = ["trial", "state", *param_columns(spec), *[o["metric"] for o in spec["objectives"]]]
    keep += [c for c in (spec.get("plot_x"), spec.get("plot_y")) if c and c not in keep]
    keep += ["pareto", ERROR_ATTR]
    out = frame[[c for c in keep if c in frame.columns]].copy()
    if "aligner" in out.columns and "aligner_converged" in frame.columns:
        # A truncated solver is named as such (engine.results.solver_label).
        out["aligner"] = [solver_label(str(name), row) for name, row in zip(out["aligner"], frame.to_dict("records"))]
    # batched ms/query and its ratios, single-query latency, one-off preparation (profiling.scoring_cost)
    for key in ("cost_ms_per_query", "cost_vs_global", "cost_vs_floor", "cost_latency_ms", "cost_latency_vs_floor",
                "cost_prepare_ms"):  # fmt: skip
        if {key, f"{key}_q25", f"{key}_q75"} <= set(frame.columns):  # every cost with its spread
            out[f"{key} [IQR]"] = [
                f"{m:.3g} [{lo:.3g}–{hi:.3g}]" if isinstance(m, float) and math.isfinite(m) else ""
                for m, lo, hi in zip(frame[key], frame[f"{key}_q25"], frame[f"{key}_q75"])
            ]
    out["pareto"] = out["pareto"].map({True: "*", False: ""})
    out[ERROR_ATTR] = out[ERROR_ATTR].astype(str).str.slice(0, 60)
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(no trials)"

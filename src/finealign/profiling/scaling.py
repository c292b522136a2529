"""Scaling curves: cost vs gallery size, tokens per item or embedding dim, and the growth exponent
fitted by least squares on log-log axes (cost ≈ c · x^k)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finealign.errors import ConfigError
from finealign.profiling.inputs import ProblemShape

AXES = ("n", "tokens", "dim")
# The x value each axis is plotted and fitted against.
AXIS_X = {"n": "nv", "tokens": "lv", "dim": "dim"}


@dataclass
class PowerLawFit:
    exponent: float
    prefactor: float
    r2: float
    points: int

    def describe(self, y: str = "latency", x: str = "N") -> str:
        return f"{y} ∝ {x}^{self.exponent:.2f} (R²={self.r2:.3f}, {self.points} points)"


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    """Least-squares line through (log x, log y): slope = exponent, R² of that line."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True)]
    if len(pairs) < 2:
        raise ConfigError(f"a power-law fit needs at least 2 points, got {len(pairs)}")
    if any(not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)) for a, b in pairs):
        raise ConfigError(f"a power-law fit needs positive finite x and y, got {pairs}")
    lx = [math.log(a) for a, _ in pairs]
    ly = [math.log(b) for _, b in pairs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ConfigError("a power-law fit needs at least two distinct x values")
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(lx, ly))
    ss_tot = sum((b - my) ** 2 for b in ly)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(exponent=slope, prefactor=math.exp(intercept), r2=r2, points=len(pairs))


def default_values(axis: str, base: ProblemShape) -> list[int]:
    """Four points doubling from a quarter of the base size, so the curve brackets it."""
    x = getattr(base, AXIS_X[check_axis(axis)])
    return [max(1, x // 4), max(1, x // 2), x, 2 * x]


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ConfigError(f"unknown scaling axis {axis!r}; choose one of {', '.join(AXES)}")
    return axis


def scaling_rows(
    profile_one: Callable[[ProblemShape], list[dict[str, Any]]],
    base: ProblemShape,
    axis: str,
    values: Sequence[int],
) -> list[dict[str, Any]]:
    """Profile at each value of one axis; every row gains `axis` and `x` (the axis value)."""
    check_axis(axis)
    rows = []
    for value in values:
        for row in profile_one(base.scaled(axis, int(value))):
            rows.append({**row, "axis": axis, "x": int(value)})
    return rows


def fit_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = ("latency_ms",)) -> list[dict[str, Any]]:
    """One fit per (aligner, axis, metric) over successful rows; too few points → skipped."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("error"):
            continue
        groups.setdefault((row["aligner"], row["axis"]), []).append(row)
    fits = []
    for (aligner, axis), group in sorted(groups.items()):
        for metric in metrics:
            points = [(r["x"], r[metric]) for r in group if _positive(r.get(metric))]
            if len({x for x, _ in points}) < 2:
                continue
            fit = fit_power_law([p[0] for p in points], [p[1] for p in points])
            fits.append(
                {
                    "aligner": aligner,
                    "axis": axis,
                    "metric": metric,
                    "exponent": fit.exponent,
                    "r2": fit.r2,
                    "points": fit.points,
                    "summary": fit.describe(metric, {"n": "N", "tokens": "L", "dim": "d"}[axis]),
                }
            )
    return fits


def _positive(value: Any) -> bool:
    try:
        return value is not None and float(value) > 0 and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False

"""Saving results: a JSON file with metrics and config, and a one-row tidy CSV (pandas)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def solver_label(name: str, metrics: Mapping[str, Any]) -> str:
    """The aligner's name for tables: a run whose iterative solver stopped at its cap carries its
    iterations and error, e.g. "tokenflow (3 it., marginal err 0.46)" — a truncated solver is
    not the method."""
    converged = metrics.get("aligner_converged")
    if converged is None or (isinstance(converged, float) and math.isnan(converged)) or converged:
        return name
    its, err = metrics.get("aligner_iterations"), metrics.get("aligner_marginal_error")
    return f"{name} ({its:.0f} it., marginal err {err:.2g})"


def save_results(
    output_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    labels: Mapping[str, Any],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    stem: str = "results",
) -> tuple[Path, Path]:
    """Write <output_dir>/<stem>.json ({labels, metrics, config, ...extra}) and <stem>.csv (one row:
    the labels — aligner, loss, encoder, data, seed — followed by the metrics)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / f"{stem}.json", output_dir / f"{stem}.csv"
    payload = {"labels": dict(labels), "metrics": dict(metrics), "config": dict(config), **dict(extra or {})}
    # temporary files renamed into place: a full disk never leaves a half results.json
    tmp_json, tmp_csv = json_path.with_suffix(".json.tmp"), csv_path.with_suffix(".csv.tmp")
    try:
        tmp_json.write_text(json.dumps(_clean(payload), indent=2, default=str))
        pd.DataFrame([{**labels, **metrics}]).to_csv(tmp_csv, index=False)
        tmp_json.replace(json_path)
        tmp_csv.replace(csv_path)
    finally:
        tmp_json.unlink(missing_ok=True)
        tmp_csv.unlink(missing_ok=True)
    return json_path, csv_path

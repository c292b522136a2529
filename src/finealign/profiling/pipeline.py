"""One profiling run end to end: table at one size, traces, scaling curves, reports on disk."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finealign.profiling.device import environment, parse_dtype, pinned_threads, resolve_device
from finealign.profiling.inputs import ProblemShape, random_input_sets
from finealign.profiling.measure import (
    ProfileSettings,
    aligner_step,
    build_aligner,
    check_profile_fits,
    profile_aligners,
)
from finealign.profiling.outputs import (
    header,
    markdown,
    plot_recall_vs_latency,
    plot_scaling,
    to_frame,
    write_table,
)
from finealign.profiling.scaling import default_values, fit_rows, scaling_rows
from finealign.profiling.traces import capture_trace

log = logging.getLogger(__name__)


@dataclass
class ProfileRun:
    out_dir: Path
    env: dict[str, str]
    rows: list[dict[str, Any]]
    scaling: list[dict[str, Any]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    top_ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_profile(
    names: Sequence[str],
    shape: ProblemShape,
    settings: ProfileSettings,
    *,
    out_root: str | Path = "runs/profile",
    out_dir: str | Path | None = None,
    scaling_axes: Sequence[str] = (),
    scaling_values: dict[str, list[int]] | None = None,
    trace: bool = True,
    eval_results: Any = None,
    progress: bool = True,
) -> ProfileRun:
    """Profile `names` at `shape`, optionally trace them and sweep scaling axes; write CSV/MD
    tables, PNG plots under out_root/<timestamp>/ and TensorBoard traces under
    out_root/traces/<timestamp>/ — or everything under `out_dir` exactly (hydra.run.dir)."""
    device = resolve_device(settings.device)
    # every size this run will reach, refused before the first is measured
    for axis in scaling_axes:
        for value in (scaling_values or {}).get(axis) or default_values(axis, shape):
            check_profile_fits(shape.scaled(axis, value), settings)
    stamp = timestamp()
    trace_root = Path(out_dir) / "traces" if out_dir is not None else Path(out_root) / "traces" / stamp
    out_dir = Path(out_dir) if out_dir is not None else Path(out_root) / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    with pinned_threads(settings.threads if device.type == "cpu" else None):
        env = environment(device)
    run = ProfileRun(out_dir=out_dir, env=env, rows=profile_aligners(names, shape, settings, progress=progress))
    run.files += write_table(run.rows, out_dir, "profile")

    if trace:
        traced = [r["aligner"] for r in run.rows if not r.get("error")]
        run.top_ops, trace_files = trace_aligners(traced, shape, settings, trace_root)
        run.files += trace_files
        if run.top_ops:
            tops = [{"aligner": a, **r} for a, ops in run.top_ops.items() for r in ops]
            run.files += write_table(tops, out_dir, "top_ops")

    for axis in scaling_axes:
        values = (scaling_values or {}).get(axis) or default_values(axis, shape)
        run.scaling += scaling_rows(
            lambda s: profile_aligners(names, s, settings, progress=progress), shape, axis, values
        )
    if run.scaling:
        run.fits = fit_rows(run.scaling, metrics=("latency_ms", "peak_mem_mib", "gflop"))
        run.files += write_table(run.scaling, out_dir, "scaling")
        if run.fits:
            run.files += write_table(run.fits, out_dir, "scaling_fits")
        for axis in scaling_axes:
            try:
                run.files.append(plot_scaling(run.scaling, out_dir / f"latency_vs_{axis}.png", axis))
            except Exception as exc:  # all rows failed on this axis: say so, keep the rest
                log.warning("no plot for axis %s: %s", axis, exc)

    if eval_results is not None:
        run.files.append(plot_recall_vs_latency(eval_results, run.rows, out_dir / "recall_vs_latency.png"))
    (out_dir / "environment.txt").write_text(header(env) + "\n", encoding="utf-8")
    return run


def trace_aligners(
    names: Sequence[str],
    shape: ProblemShape,
    settings: ProfileSettings,
    trace_dir: str | Path,
) -> tuple[dict[str, list[dict[str, Any]]], list[Path]]:
    """One TensorBoard trace directory per aligner (trace_dir/<name>/); returns the top ops per
    aligner and the trace files. An aligner that fails to trace is reported and skipped."""
    device = resolve_device(settings.device)
    dtype = parse_dtype(settings.dtype)
    sets = random_input_sets(
        shape, min(2, settings.input_sets), device, dtype, seed=settings.seed, requires_grad=settings.backward
    )
    tops, files = {}, []
    with pinned_threads(settings.threads if device.type == "cpu" else None):
        for name in names:
            try:
                aligner = build_aligner(name, shape.dim, settings.aligner_options.get(name))
                aligner = aligner.to(device=device, dtype=dtype).train(settings.backward)
                result = capture_trace(
                    aligner_step(aligner, settings.backward), sets, device, Path(trace_dir) / name, worker_name=name
                )
            except Exception as exc:
                log.warning("trace of %s failed: %s: %s", name, type(exc).__name__, exc)
                continue
            tops[name] = result.top_ops
            files += result.files
    return tops, files


def render(run: ProfileRun, top: int = 5) -> str:
    """The text report: environment, main table, top ops per aligner, scaling fits, files."""
    from finealign.profiling.outputs import summary_columns  # noqa: PLC0415

    parts = [header(run.env), "", markdown(summary_columns(to_frame(run.rows)))]
    for name, ops in run.top_ops.items():
        if ops:
            parts += ["", f"top ops by self time — {name}:", markdown(to_frame(ops[:top]))]
    if run.fits:
        parts += ["", "scaling fits:"] + [f"  {f['aligner']:<20} {f['summary']}" for f in run.fits]
    parts += ["", f"written to {run.out_dir}"]
    return "\n".join(parts)

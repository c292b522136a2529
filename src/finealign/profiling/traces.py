"""torch.profiler traces for TensorBoard, and a top-ops-by-self-time table.

The traces are Chrome-trace JSON files written by `tensorboard_trace_handler`; view them with
`pip install torch-tb-profiler; tensorboard --logdir runs/profile/traces` (an optional,
upstream-unmaintained plugin: nothing here imports it), or open one in chrome://tracing / Perfetto.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finealign.errors import DataError
from finealign.profiling.device import synchronize


@dataclass
class TraceResult:
    files: list[Path]
    top_ops: list[dict[str, Any]] = field(default_factory=list)


def capture_trace(
    fn: Callable[..., Any],
    input_sets: Sequence[tuple],
    device: torch.device,
    logdir: str | Path,
    *,
    steps: int = 3,
    top: int = 10,
    worker_name: str | None = None,
) -> TraceResult:
    """Profile `steps` calls (after one warm-up step the schedule discards) and write one trace."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler  # noqa: PLC0415

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    before = set(logdir.glob("*.json*"))
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(logdir), worker_name=worker_name),
        record_shapes=True,
    ) as prof:
        for i in range(steps + 1):
            fn(*input_sets[i % len(input_sets)])
            synchronize(device)
            prof.step()
    files = sorted(set(logdir.glob("*.json*")) - before)
    return TraceResult(files=files, top_ops=top_ops(prof, top, device))


def top_ops(prof, top: int, device: torch.device) -> list[dict[str, Any]]:
    """The `top` ops by self time (device time on GPU, CPU time on CPU), from key_averages()."""
    rows = []
    for avg in prof.key_averages():
        # Newer torch calls it device time; older releases only have the cuda_* names.
        self_dev = getattr(avg, "self_device_time_total", None)
        if self_dev is None:
            self_dev = getattr(avg, "self_cuda_time_total", 0)
        rows.append(
            {
                "op": avg.key,
                "calls": int(avg.count),
                "self_cpu_ms": avg.self_cpu_time_total / 1e3,
                "self_device_ms": float(self_dev or 0) / 1e3,
            }
        )
    key = "self_device_ms" if device.type == "cuda" else "self_cpu_ms"
    rows = [r for r in rows if not r["op"].startswith("ProfilerStep")]
    rows.sort(key=lambda r: r[key], reverse=True)
    total = sum(r[key] for r in rows) or 1.0
    for r in rows:
        r["self_pct"] = 100.0 * r[key] / total
    return rows[:top]


def load_trace(path: str | Path) -> dict[str, Any]:
    """Parse one trace file (plain or gzipped JSON); DataError if it is missing or not a trace."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trace file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"trace file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "traceEvents" not in data:
        raise DataError(f"trace file {path} has no 'traceEvents': not a torch.profiler trace")
    return data

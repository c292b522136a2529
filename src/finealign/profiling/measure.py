"""Profile registered aligners (or any callable): latency, peak memory, FLOPs, efficiency.

Every aligner comes from the registry, so aligners added later are profiled without changes here.
One failing aligner yields a row with its `error` and the run goes on.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from finealign.errors import ConfigError
from finealign.profiling.device import device_name as _device_name
from finealign.profiling.device import dtype_name, parse_dtype, pinned_threads, resolve_device
from finealign.profiling.flops import count_flops, matmul_throughput
from finealign.profiling.inputs import ProblemShape, random_input_sets
from finealign.profiling.memory import peak_memory
from finealign.profiling.timing import TIMERS, measure_latency

if TYPE_CHECKING:
    from finealign.aligners.base import Aligner


@dataclass
class ProfileSettings:
    """How to measure (the problem size is a separate ProblemShape)."""

    device: str = "cpu"
    dtype: str = "fp32"
    repeats: int = 10
    warmup: int = 3
    input_sets: int = 3  # distinct random inputs that the repeats rotate through
    threads: int | None = None  # CPU intra-op threads; None = torch's current setting, recorded
    timer: str = "auto"  # auto | perf_counter | cuda_events | do_bench
    memory: bool = True
    flops: bool = True
    backward: bool = False  # time forward + backward of scores.sum() (training cost) instead
    seed: int = 0
    # Seconds of timed calls allowed per aligner: a slow one gets fewer repeats (never < 3), so
    # one expensive method cannot stall a whole run. None = always `repeats`.
    time_budget_s: float | None = None
    aligner_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → options

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.input_sets < 1:
            raise ConfigError(f"input_sets must be >= 1, got {self.input_sets}")
        if self.timer not in TIMERS:
            raise ConfigError(f"unknown timer {self.timer!r}; choose one of {', '.join(TIMERS)}")
        parse_dtype(self.dtype)
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")


def resolve_aligners(spec: str | Sequence[str]) -> list[str]:
    """'all' → every registered aligner; 'a,b' or a list → those names, each checked (an unknown
    name raises UnknownNameError with close matches) before anything runs."""
    from finealign.registry import ALIGNERS, ensure_builtins, list_aligners  # noqa: PLC0415

    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("no aligner given; pass aligner=all or aligner=NAME[,NAME...]")
    if names == ["all"]:
        return list_aligners()
    ensure_builtins("aligners")
    for name in names:
        ALIGNERS.entry(name)
    return names


def build_aligner(name: str, dim: int, options: dict[str, Any] | None = None) -> Aligner[Any]:
    """create_aligner(name, **options), passing the token `dim` when the aligner's Config has a
    `dim` field (aligners with learned layers need it) and the options do not set it."""
    from finealign.registry import ALIGNERS, config_class, create_aligner, ensure_builtins  # noqa: PLC0415

    ensure_builtins("aligners")
    opts = dict(options or {})
    cfg = config_class(ALIGNERS.get(name))
    if cfg is not None and "dim" in {f.name for f in dataclasses.fields(cfg)}:
        opts.setdefault("dim", dim)
    return create_aligner(name, **opts)


def profile_callable(
    label: str,
    fn: Callable[..., Any],
    input_sets: Sequence[tuple],
    settings: ProfileSettings,
    *,
    device: torch.device,
    peak_flops_per_s: float | None = None,
) -> dict[str, Any]:
    """Latency, peak memory and FLOPs of `fn(*inputs)` as one report row. Works for any callable
    (an encoder forward, an eval step), not only aligners."""
    row: dict[str, Any] = {"aligner": label}
    stats = measure_latency(
        fn,
        input_sets,
        device,
        warmup=settings.warmup,
        repeats=_repeats(fn, input_sets, settings, device),
        timer=settings.timer,
    )
    row.update(stats.as_dict())
    if settings.memory:
        mem = peak_memory(fn, input_sets[0], device)
        row.update(peak_mem_mib=mem.peak_mib, mem_method=mem.method)
    if settings.flops:
        flops = count_flops(fn, input_sets[0]).total
        row["gflop"] = flops / 1e9
        achieved = flops / (stats.median_ms / 1e3) if stats.median_ms > 0 else math.nan
        row["achieved_tflops"] = achieved / 1e12
        if peak_flops_per_s:
            row["matmul_peak_tflops"] = peak_flops_per_s / 1e12
            row["frac_of_matmul_peak"] = achieved / peak_flops_per_s
    return row


def _repeats(fn, input_sets, settings: ProfileSettings, device: torch.device) -> int:
    """`settings.repeats`, cut down to fit `time_budget_s` from one probe call (which also warms
    up)."""
    if settings.time_budget_s is None:
        return settings.repeats
    probe = measure_latency(fn, input_sets[:1], device, warmup=0, repeats=1, timer="perf_counter")
    fit = int(settings.time_budget_s * 1e3 / max(probe.median_ms, 1e-6))
    return max(min(3, settings.repeats), min(settings.repeats, fit))


def aligner_step(aligner: torch.nn.Module, backward: bool) -> Callable[..., Any]:
    """The timed call: inference (no autograd) or forward + backward of the summed scores."""
    if not backward:

        def forward(visual, text):
            with torch.inference_mode():
                return aligner(visual, text)

        return forward

    params = [p for p in aligner.parameters() if p.requires_grad]

    def forward_backward(visual, text):
        aligner(visual, text).float().sum().backward()
        # Drop the gradients inside the call that made them, so each call (and the memory
        # profile of one call) sees its own allocations and frees, like zero_grad(set_to_none).
        for t in [visual.tokens, text.tokens, visual.pooled, text.pooled, *params]:
            if t is not None:
                t.grad = None

    return forward_backward


def check_profile_fits(shape: ProblemShape, settings: ProfileSettings) -> None:
    """ResourceError before a profile whose inputs cannot fit (a lower bound from the shapes): every
    input set's tokens, masks and pooled vectors, one scores matrix, and with `backward` the tokens'
    gradients."""
    from finealign.resources import check_memory

    device, dtype = resolve_device(settings.device), parse_dtype(settings.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    one_set = (shape.nv * shape.lv + shape.nt * shape.lt) * shape.dim * size + shape.nv * shape.lv + shape.nt * shape.lt
    parts = {f"{settings.input_sets} input set(s) of {shape.nv}×{shape.lv} and {shape.nt}×{shape.lt} tokens, d={shape.dim}":
             settings.input_sets * one_set, f"scores {shape.nv}×{shape.nt}": shape.nv * shape.nt * size}  # fmt: skip
    if settings.backward:
        parts["the tokens' gradients"] = one_set
    check_memory("this profile", parts, device, "lower nv, nt, lv, lt, dim (or the scaling values) or input_sets")


def profile_aligners(
    names: Sequence[str],
    shape: ProblemShape,
    settings: ProfileSettings,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per aligner at one problem size; a failure becomes a row with `error` set."""
    device = resolve_device(settings.device)
    dtype = parse_dtype(settings.dtype)
    check_profile_fits(shape, settings)
    with pinned_threads(settings.threads if device.type == "cpu" else None) as threads:
        peak = _peak_or_none(device, dtype) if settings.flops else None
        sets = random_input_sets(
            shape, settings.input_sets, device, dtype, seed=settings.seed, requires_grad=settings.backward
        )
        common = {
            "device": device.type,
            "device_name": _device_name(device),
            "dtype": dtype_name(dtype),
            **shape.as_dict(),
            "threads": threads if device.type == "cpu" else None,
            "mode": "fwd+bwd" if settings.backward else "inference",
        }
        rows = []
        for name in _progress(names, progress, f"profiling {shape.nv}x{shape.nt}"):
            try:
                aligner = build_aligner(name, shape.dim, settings.aligner_options.get(name))
                aligner = aligner.to(device=device, dtype=dtype).train(settings.backward)
                step = aligner_step(aligner, settings.backward)
                row = profile_callable(name, step, sets, settings, device=device, peak_flops_per_s=peak)
                row["error"] = ""
            except Exception as exc:  # report it and go on with the next aligner
                row = {"aligner": name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            rows.append({**common, **row})
            _release(device)
    return rows


def _peak_or_none(device: torch.device, dtype: torch.dtype) -> float | None:
    try:
        # Measured now, under this run's load and thread count: a peak cached from another run (or
        # another machine state) once gave "110 % of matmul peak".
        return matmul_throughput(device, dtype, use_cache=False)
    except Exception:  # e.g. a dtype without a matmul kernel here; efficiency is then left blank
        return None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _progress(items, enabled: bool, desc: str):
    from finealign.progress import bar as progress_bar  # noqa: PLC0415

    return progress_bar(items, progress=enabled, desc=desc, leave=False)

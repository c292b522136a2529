"""`finealign profile key=value ...`: latency, memory, FLOPs, traces and scaling of aligners.

    finealign profile aligner=all device=cpu nv=16 nt=80 lv=50 lt=32 dim=256 repeats=10
    finealign profile aligner=hard,mean_max device=cuda dtype=bf16 scaling=n,tokens
    finealign profile aligner=mean_max mean_max.direction=both eval_results=runs/eval/results.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any

from finealign.errors import ConfigError

SETTING_KEYS = {
    "device": str, "dtype": str, "repeats": int, "warmup": int, "input_sets": int, "threads": int,
    "timer": str, "memory": bool, "flops": bool, "backward": bool, "seed": int,
    "time_budget_s": float,
}
SHAPE_KEYS = {"nv": int, "nt": int, "lv": int, "lt": int, "dim": int}
RUN_KEYS = {
    "aligner": str, "scaling": str, "n_values": list, "tokens_values": list, "dim_values": list,
    "trace": bool, "out": str, "eval_results": str, "progress": bool,
}
ALL_KEYS = {**SETTING_KEYS, **SHAPE_KEYS, **RUN_KEYS}
CLI_DEFAULTS = {"nv": 16, "nt": 80, "repeats": 10, "scaling": "n"}  # small enough for a CPU run of every aligner; scaling=none skips the curves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "keys: " + ", ".join(ALL_KEYS) + "\n"
        "aligner options: ALIGNER.OPTION=VALUE (e.g. mean_max.direction=both)\n"
        "scaling: none | n | tokens | dim | all, or a comma list (values: n_values=8,16,32 ...)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, Hydra style")


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split KEY=VALUE items into typed settings and per-aligner options; ConfigError on a bad
    item or an unknown key (with close matches)."""
    values: dict[str, Any] = dict(CLI_DEFAULTS)
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        if "." in key:
            aligner, _, option = key.partition(".")
            options.setdefault(aligner, {})[option] = _literal(raw)
            continue
        if key not in ALL_KEYS:
            close = difflib.get_close_matches(key, list(ALL_KEYS), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown profile setting {key!r}{hint} (settings: {', '.join(ALL_KEYS)})")
        values[key] = _convert(key, raw, ALL_KEYS[key])
    return values, options


def _convert(key: str, raw: str, kind: type) -> Any:
    raw = raw.strip()
    if kind is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {raw!r}")
    if kind is int:
        if key == "threads" and raw.lower() in ("none", "null", ""):
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key} must be an int, got {raw!r}") from None
    if kind is float:
        if raw.lower() in ("none", "null", ""):
            return None
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if kind is list:
        try:
            return [int(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{key} must be a comma list of ints, got {raw!r}") from None
    return raw


def _literal(raw: str) -> Any:
    """An aligner option value: bool, int, float, null, else the string."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def scaling_axes(spec: str | None) -> list[str]:
    from finealign.profiling.scaling import AXES, check_axis  # noqa: PLC0415

    if not spec or spec == "none":
        return []
    if spec == "all":
        return list(AXES)
    return [check_axis(a.strip()) for a in spec.split(",") if a.strip()]


def run(args: argparse.Namespace) -> int:
    from finealign.profiling.inputs import ProblemShape  # noqa: PLC0415
    from finealign.profiling.pipeline import render, run_profile  # noqa: PLC0415
    from finealign.profiling.runner import ProfileSettings, resolve_aligners  # noqa: PLC0415

    values, options = parse_overrides(args.overrides)
    names = resolve_aligners(values.get("aligner", "all"))
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"options given for aligner(s) {unknown} that are not being profiled ({names})")
    settings = ProfileSettings(
        **{k: values[k] for k in SETTING_KEYS if k in values}, aligner_options=options
    )
    shape_defaults = {f.name: f.default for f in dataclasses.fields(ProblemShape)}
    shape = ProblemShape(**{k: values.get(k, shape_defaults[k]) for k in SHAPE_KEYS})
    axes = scaling_axes(values.get("scaling"))
    result = run_profile(
        names,
        shape,
        settings,
        out_root=values.get("out", "runs/profile"),
        scaling_axes=axes,
        scaling_values={a: values[f"{a}_values"] for a in axes if f"{a}_values" in values},
        trace=values.get("trace", True),
        eval_results=values.get("eval_results"),
        progress=values.get("progress", True),
    )
    print(render(result))
    return 0 if all(not r.get("error") for r in result.rows) else 1

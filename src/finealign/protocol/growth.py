"""When a resumed protocol is the same protocol grown, not another one.

A protocol may grow — new methods, new factors, new levels at the end of a factor, more methods
running a factor — and keep what it has done: every finished trial and final run was produced by
parts of the spec that did not change. Anything else that differs is named.
"""

from __future__ import annotations

from typing import Any


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [where.lstrip(".") or "(spec)"]


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


def growth_problems(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a resumed protocol changed that earlier work depends on. A protocol may grow — new
    methods, new factors, new levels at the end of a factor, more methods running a factor — and
    keeps what it has done; anything else that differs is listed (dotted paths)."""
    fixed = lambda spec: {k: v for k, v in spec.items() if k not in ("methods", "factors")}  # noqa: E731
    problems = differences(fixed(stored), fixed(new), "spec")
    new_methods = _by_name(new["methods"])
    for name, method in _by_name(stored["methods"]).items():
        if name not in new_methods:
            problems.append(f"spec.methods.{name} (removed)")
        else:
            problems += differences(method, new_methods[name], f"spec.methods.{name}")
    new_factors = _by_name(new.get("factors") or [])
    for name, factor in _by_name(stored.get("factors") or []).items():
        grown = new_factors.get(name)
        if grown is None:
            problems.append(f"spec.factors.{name} (removed)")
            continue
        where = f"spec.factors.{name}"
        problems += differences(factor["retune"], grown["retune"], f"{where}.retune")
        if grown["levels"][: len(factor["levels"])] != factor["levels"]:
            problems.append(f"{where}.levels (only new levels at the end may be added)")
        if factor["methods"] and not set(factor["methods"]) <= set(grown["methods"] or new_methods):
            problems.append(f"{where}.methods (methods may be added, not removed)")
    return problems

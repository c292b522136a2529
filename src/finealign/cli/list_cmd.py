"""`finealign list [aligners|losses|encoders|datasets] [PATTERN]`."""

from __future__ import annotations

import argparse

from finealign.registry import REGISTRIES, ensure_builtins, registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", default=None, help=f"one of {', '.join(REGISTRIES)} (default: all)")
    parser.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'mean_*'")


def format_kind(kind: str, pattern: str | None = None) -> str:
    ensure_builtins(kind)
    reg = registry(kind)
    names = reg.list(pattern)
    lines = [f"{kind} ({len(names)}):"]
    width = max((len(n) for n in names), default=0)
    for name in names:
        entry = reg.entry(name)
        try:
            desc = reg.describe(name)
        except Exception as exc:  # a broken plugin must not hide the rest of the list
            desc = f"<failed to load: {exc}>"
        origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
        lines.append(f"  {name.ljust(width)}  {desc}{origin}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        registry(kind)  # unknown kind → clear error before importing anything
    print("\n\n".join(format_kind(k, args.pattern) for k in kinds))
    return 0

"""`finealign list [aligners|losses|encoders|datasets] [PATTERN]`."""

from __future__ import annotations

import argparse

from finealign.registry.catalog import BUILTINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", default=None, help=f"one of {', '.join(BUILTINS)} (default: all)")
    parser.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'mean_*'")


def format_kind(kind: str, pattern: str | None = None) -> str:
    rows = _catalog_rows(kind, pattern)
    if rows is None:
        rows = _registry_rows(kind, pattern)
    lines = [f"{kind} ({len(rows)}):"]
    width = max((len(n) for n, _ in rows), default=0)
    lines += [f"  {name.ljust(width)}  {desc}" for name, desc in rows]
    return "\n".join(lines)


def _catalog_rows(kind: str, pattern: str | None) -> list[tuple[str, str]] | None:
    """The built-ins from the generated catalog (no torch import), or None when the registry must
    answer: a plugin of this kind is installed, or the built-ins are already imported (components
    registered in this process are then listed too)."""
    import fnmatch
    import importlib.metadata
    import sys

    from finealign.registry import _BUILTIN_PACKAGES, registry

    if _BUILTIN_PACKAGES[kind] in sys.modules or importlib.metadata.entry_points(group=registry(kind).group):
        return None
    names = sorted(n for n in BUILTINS[kind] if pattern is None or fnmatch.fnmatchcase(n, pattern))
    return [(n, BUILTINS[kind][n]) for n in names]


def _registry_rows(kind: str, pattern: str | None) -> list[tuple[str, str]]:
    from finealign.registry import ensure_builtins, registry

    ensure_builtins(kind)
    reg = registry(kind)
    rows = []
    for name in reg.list(pattern):
        entry = reg.entry(name)
        try:
            desc = reg.describe(name)
        except Exception as exc:  # a broken plugin must not hide the rest of the list
            desc = f"<failed to load: {exc}>"
        origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
        rows.append((name, f"{desc}{origin}"))
    return rows


def run(args: argparse.Namespace) -> int:
    from finealign.registry import REGISTRIES, registry

    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        registry(kind)  # unknown kind → clear error before importing anything
    print("\n\n".join(format_kind(k, args.pattern) for k in kinds))
    return 0

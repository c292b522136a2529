"""`finealign cache data=flickr8k split=test,train vision=mobilenet_v2 text=minilm [key=value ...]`.

Keys: data, split (comma list), vision, text, cache_dir, batch_size, device, num_workers, and
dotted options for each component: `data.max_items=8`, `vision.image_size=224`, `text.max_length=32`.
Values are parsed as YAML scalars (8 → int, true → bool, null → None).
"""

from __future__ import annotations

import argparse
from typing import Any

from finealign.errors import ConfigError

_DEFAULTS: dict[str, Any] = {
    "data": "flickr8k",
    "split": "test",
    "vision": "mobilenet_v2",
    "text": "minilm",
    "cache_dir": None,
    "batch_size": 64,
    "device": "cpu",
    "num_workers": 0,
}
_GROUPS = ("data", "vision", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"settings ({', '.join(_DEFAULTS)}) and component options (data.max_items=8, vision.image_size=224)",
    )
    parser.add_argument("--verify", action="store_true",
                        help="check every entry in the cache folder (sizes, shapes, dtypes, SHA-256, finite "
                             "tokens) instead of building; exit 1 if one is damaged")


def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """KEY=VALUE pairs → (settings, options per component group)."""
    settings = dict(_DEFAULTS)
    options: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}")
        group, dot, option = key.partition(".")
        if dot:
            if group not in options:
                raise ConfigError(f"unknown option group {group!r} in {pair!r}; use {', '.join(_GROUPS)}")
            options[group][option] = _value(raw)
        elif key in settings:
            settings[key] = raw if key in _GROUPS or key == "split" else _value(raw)
        else:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(settings)} (or group.option=value)")
    return settings, options


def verify(cache_dir: Any) -> int:
    from pathlib import Path

    from finealign.cache import default_cache_dir
    from finealign.cache.format import verify_entry

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not entries:
        print(f"no cache entries in {root}")
        return 0
    damaged = 0
    for entry in entries:
        status, problems = verify_entry(entry)
        damaged += status == "damaged"
        print(f"{status:12s} {entry}" + "".join(f"\n             {p}" for p in problems))
    return 1 if damaged else 0


def run(args: argparse.Namespace) -> int:
    from finealign.cache import build_feature_cache, read_meta

    settings, options = parse_overrides(args.overrides)
    if args.verify:
        return verify(settings["cache_dir"])
    entries = {}
    for split in [s.strip() for s in str(settings["split"]).split(",") if s.strip()]:
        entry = build_feature_cache(
            settings["data"],
            options["data"],
            split,
            settings["vision"],
            options["vision"],
            settings["text"],
            options["text"],
            cache_dir=settings["cache_dir"],
            batch_size=settings["batch_size"],
            device=settings["device"],
            num_workers=settings["num_workers"],
        )
        meta = read_meta(entry) or {}
        print(
            f"{settings['data']}/{split}: {meta.get('num_items')} items, {meta.get('num_captions')} captions "
            f"-> {entry}"
        )
        entries[split] = str(entry)
    # The `features` dataset reads these entries: one absolute directory per split.
    print("use with: data=features " + " ".join(f"data.splits.{k}={v}" for k, v in entries.items()))
    return 0

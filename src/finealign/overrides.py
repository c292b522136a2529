"""Command-line overrides read by Hydra's own grammar, everywhere.

Every `KEY=VALUE` finealign accepts — when composing a config, when re-applying overrides to a
checkpoint's saved config, when `-m` expands comma lists — is parsed by Hydra's override parser,
so `1e-4` is a float, `[8,16]` a list, `null` None, `'a,b'` one string, and `+key` / `++key` /
`~key` mean what Hydra says, in every command alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from finealign.errors import ConfigError


def parse(overrides: Iterable[str]) -> list[Any]:
    """Hydra `Override` objects; a malformed one is a ConfigError that quotes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as exc:
            raise ConfigError(f"cannot read override {text!r}: {exc}") from None
    return parsed


def expand_sweeps(overrides: Iterable[str]) -> list[list[str]]:
    """Hydra's basic sweeper: the cartesian product of every comma list / range(), one list of
    overrides per job, in Hydra's order (the last key varies fastest). Interval sweeps need a
    search (finealign sweep), not an enumeration."""
    choices: list[list[str]] = []
    for text, override in zip(overrides := list(overrides), parse(overrides), strict=True):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(
                f"{text!r} is not a list of values: -m enumerates choices; search ranges with finealign sweep"
            )
        key = override.get_key_element()
        choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(combo) for combo in itertools.product(*choices)]


def apply(cfg: DictConfig, overrides: Iterable[str], group_node: Any = None) -> DictConfig:
    """`overrides` applied to an already composed (e.g. saved) config, by Hydra's grammar.

    `group_node(key, value)` may return the config node of a group choice (`aligner=hard` → the
    contents of aligner/hard.yaml), which replaces the node at `key`; any other override sets
    (`key=v`, `++key=v`), adds (`+key=v`, refused when the key exists) or deletes (`~key`) one value.
    """
    cfg = OmegaConf.create(
        cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=False))
    )  # a DictConfig gives a dict
    for override in parse(overrides):
        key = override.key_or_group
        if override.package is not None:
            raise ConfigError(
                f"{override.input_line!r}: package overrides (@) apply when composing, not to a saved config"
            )
        if override.is_sweep_override():
            raise ConfigError(f"{override.input_line!r} is a sweep: use -m (train) or finealign sweep")
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig) or leaf not in node:
                raise ConfigError(f"{override.input_line!r}: there is no {key!r} to delete")
            node.pop(leaf)
            continue
        value = override.value()
        replacement = group_node(key, value) if group_node is not None and isinstance(value, str) else None
        if replacement is not None:
            cfg[key] = replacement
            continue
        exists = OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING
        if override.is_add() and exists:
            raise ConfigError(f"{override.input_line!r}: {key!r} already exists (drop the +, or use ++)")
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


_MISSING = object()

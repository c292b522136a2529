"""The one home of config-value checks: each raises ConfigError naming the key, the rule and the
value it got, so every component's `__post_init__` says "k must be a positive int, got 0" alike.

bool is never an int here: `True` as a batch size is a mistake, not 1.
"""

from __future__ import annotations

import math
from typing import Any

from finealign.errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int = 1, optional: bool = False, note: str = "") -> None:
    """`value` is an int >= low (or None when `optional`)."""
    if optional and value is None:
        return
    if not is_int(value) or value < low:
        what = "a positive int" if low == 1 else ("a non-negative int" if low == 0 else f"an int >= {low}")
        raise ConfigError(f"{name} must be {what}{' or null' if optional else ''}{note}, got {value!r}")


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    check_int(name, value, low=1, optional=optional)


def check_number(name: str, value: Any, *, low: float | None = None, strict: bool = False,
                 optional: bool = False) -> None:  # fmt: skip
    """`value` is a finite number, >= low (> low when `strict`), or None when `optional`."""
    if optional and value is None:
        return
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ConfigError(f"{name} must be a finite number{bound}{' or null' if optional else ''}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")

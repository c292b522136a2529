"""The one home of config-value checks: each raises ConfigError naming the key, the rule and the
value it got, so every component's `__post_init__`, settings dataclass and spec file parser says
"k must be a positive int, got 0" alike.

The rules: bool is never an int or a number here (`True` as a batch size is a mistake, not 1); a
number is finite (nan and inf are refused unless a caller accepts them explicitly); a choice out of
a fixed set, an unknown key or an unknown name is answered with its close matches ("did you mean").
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from finealign.errors import ConfigError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def close_matches(value: Any, names: Iterable[Any], *, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The names closest to `value` (difflib's ratio >= cutoff), best first."""
    return difflib.get_close_matches(str(value), [str(name) for name in names], n=n, cutoff=cutoff)


def did_you_mean(value: Any, names: Iterable[Any], *, n: int = 3, cutoff: float = 0.5) -> str:
    """ " Did you mean 'a', 'b'?" for the close matches of `value` among `names`; "" when none."""
    close = close_matches(value, names, n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def check_int(name: str, value: Any, *, low: int = 1, optional: bool = False, note: str = "") -> None:
    """`value` is an int >= low (or None when `optional`)."""
    if optional and value is None:
        return
    if not is_int(value) or value < low:
        what = "a positive int" if low == 1 else ("a non-negative int" if low == 0 else f"an int >= {low}")
        raise ConfigError(f"{name} must be {what}{' or null' if optional else ''}{note}, got {value!r}")


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    check_int(name, value, low=1, optional=optional)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
    high_strict: bool = False,
    optional: bool = False,
    note: str = "",
) -> None:
    """`value` is a finite number, >= low (> low when `strict`), <= high (< high when
    `high_strict`), or None when `optional`."""
    if optional and value is None:
        return
    ok = is_finite_number(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high if high_strict else value <= high
    if not ok:
        if low is not None and high is not None:
            bound = f" in {'(' if strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"
        elif low is not None:
            bound = f" {'>' if strict else '>='} {low:g}"
        elif high is not None:
            bound = f" {'<' if high_strict else '<='} {high:g}"
        else:
            bound = ""
        raise ConfigError(f"{name} must be a finite number{bound}{' or null' if optional else ''}{note}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """`value` is true or false: "no" and 0 are not (a truthy string would silently mean True)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def check_text(name: str, value: Any, *, optional: bool = False, what: str = "a non-empty string") -> None:
    """`value` is a non-empty string (or None when `optional`); `what` says what the string names."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be {what}{' or null' if optional else ''}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """`value` is one of `choices`; otherwise the message lists them and the close matches."""
    options = tuple(choices)
    if isinstance(value, bool) or value not in options:
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        raise ConfigError(
            f"{name} must be one of {', '.join(map(str, options))}, got {value!r}{'.' if hint else ''}{hint}"
        )


def check_known_keys(given: Mapping[Any, Any] | Iterable[Any], allowed: Iterable[str], where: str) -> None:
    """Every key of `given` is in `allowed`: "{where} has no key 'x'; did you mean 'y'?"."""
    allowed = tuple(allowed)
    for key in given:
        if key not in allowed:
            close = close_matches(key, allowed, n=2)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{where} has no key {key!r}{hint} (allowed: {', '.join(allowed)})")

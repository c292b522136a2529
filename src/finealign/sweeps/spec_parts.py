"""The parts of a spec file that sweep files (`configs/sweep/`, sweeps/spec.py) and protocol files
(`configs/protocol/`, protocol/spec.py) share, parsed one way for both:

- a search space: `{NAME: {low, high, log, step, type, grid}}` ranges or `{NAME: {values: [...]}}`
  (or a bare list) categorical choices, keyed by the Hydra override they are passed as
  (`parse_params` → `ParamSpec`s);
- lists of Hydra overrides (`parse_overrides`), with `override_key` to read their key;
- the `objective: module:function` hook (`check_objective`).

Each raises ConfigError naming the key (`where`) and the problem; the rules for single values are
finealign.checks'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from finealign.checks import check_bool, check_choice, check_known_keys, check_number, is_finite_number
from finealign.errors import ConfigError

Value = Any  # None | bool | int | float | str: what Optuna can store as a categorical choice


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: a categorical list (`values`) or a numeric range (`low`..`high`).

    `grid` lists the values a range takes in grid mode (a categorical param uses its `values`).
    The name is the Hydra override key the value is passed as (`aligner.epsilon=0.1`).
    """

    name: str
    kind: str  # "categorical" | "float" | "int"
    values: tuple[Value, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    grid: tuple[Value, ...] = ()

    ALLOWED = ("values", "low", "high", "log", "step", "type", "grid")

    @classmethod
    def from_raw(cls, name: str, raw: Any) -> ParamSpec:
        where = f"param {name!r}"
        if isinstance(raw, (list, tuple)):  # shorthand: a bare list is a categorical choice
            raw = {"values": list(raw)}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping (values: [...] or low/high) or a list, got {raw!r}")
        check_known_keys(raw, cls.ALLOWED, where)
        if "values" in raw:
            extra = [k for k in ("low", "high", "log", "step", "grid") if k in raw]
            if extra:
                raise ConfigError(f"{where}: give either values or a low/high range, not both (also has {extra})")
            values = tuple(raw["values"] or ())
            if not values:
                raise ConfigError(f"{where}: values is empty")
            for v in values:
                if v is not None and not isinstance(v, (bool, int, float, str)):
                    raise ConfigError(f"{where}: value {v!r} is not a bool, number, string or null")
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"{where}: values {list(values)} hold duplicates")
            return cls(name=name, kind="categorical", values=values)
        if "low" not in raw or "high" not in raw:
            raise ConfigError(f"{where} needs values: [...] or both low and high")
        low, high, step = raw["low"], raw["high"], raw.get("step")
        for key, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
            check_number(f"{where}: {key}", v)
        kind = raw.get("type") or ("int" if all(isinstance(v, int) for v in (low, high)) else "float")
        check_choice(f"{where}: type", kind, ("int", "float"))
        if kind == "int" and not all(isinstance(v, int) for v in (low, high, step if step is not None else 1)):
            raise ConfigError(f"{where}: an int range needs int low/high/step, got {low!r}, {high!r}, {step!r}")
        log = raw.get("log", False)
        check_bool(f"{where}: log", log)
        if not low <= high:
            raise ConfigError(f"{where}: low ({low}) must not exceed high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be > 0, got {step}")
        if log and step is not None:
            raise ConfigError(f"{where}: Optuna cannot combine log=true with a step")
        grid = tuple(raw.get("grid") or ())
        for v in grid:
            if not is_finite_number(v) or not low <= v <= high:
                raise ConfigError(f"{where}: grid value {v!r} is not a number in [{low}, {high}]")
            if kind == "int" and not isinstance(v, int):
                raise ConfigError(f"{where}: grid value {v!r} of an int range is not an int")
        return cls(name=name, kind=kind, low=low, high=high, log=log, step=step, grid=grid)

    def grid_values(self) -> tuple[Value, ...]:
        if self.kind == "categorical":
            return self.values
        if not self.grid:
            raise ConfigError(
                f"param {self.name!r} is a range ({self.low}..{self.high}); grid mode needs the values "
                f"to try: add grid: [...] to it"
            )
        return self.grid

    def signature(self) -> tuple:
        """What Optuna requires to agree between two uses of one parameter name."""
        return (self.kind, self.log, self.values if self.kind == "categorical" else ())


def parse_params(raw: Any, where: str, reserved: Iterable[str] = (), why: str = "") -> tuple[ParamSpec, ...]:
    """A search space: a mapping of override keys to ParamSpec forms (null: none). A key in
    `reserved` is one the caller sets itself and may not be searched (`why` is said after it)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must map override keys to search ranges or values, got {raw!r}")
    params = tuple(ParamSpec.from_raw(str(k), v) for k, v in raw.items())
    reserved = tuple(reserved)
    for p in params:
        if p.name in reserved:
            raise ConfigError(f"{where}: {p.name!r} cannot be searched{why}")
    return params


def params_from_record(raw: Iterable[Mapping[str, Any]]) -> tuple[ParamSpec, ...]:
    """ParamSpecs back from their JSON record (`dataclasses.asdict`: tuples stored as lists)."""
    return tuple(
        ParamSpec(**{**p, "values": tuple(p.get("values") or ()), "grid": tuple(p.get("grid") or ())}) for p in raw
    )


def parse_overrides(raw: Any, where: str, reserved: Iterable[str] = (), why: str = "") -> tuple[str, ...]:
    """A list of `KEY=VALUE` Hydra overrides (null: none). An override of a key in `reserved` is
    refused, with `why` said after it."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where} must be a list of KEY=VALUE strings, got {raw!r}")
    reserved = tuple(reserved)
    for o in raw:
        if not isinstance(o, str) or "=" not in o:
            raise ConfigError(f"{where} must hold strings like 'aligner=hard', got {o!r}")
        if override_key(o) in reserved:
            raise ConfigError(f"{where} sets {override_key(o)!r}{why}")
    return tuple(raw)


def check_objective(objective: Any) -> None:
    """`objective: module:function` (a function replacing compose + run_experiment) or null."""
    if objective is not None and (not isinstance(objective, str) or ":" not in objective):
        raise ConfigError(f"objective must be 'module:function' or null, got {objective!r}")


def override_key(override: str) -> str:
    """`aligner=hard` → `aligner`; `+train.x=1` / `~foo` → `train.x` / `foo`."""
    key = override.split("=", 1)[0].strip()
    return key.lstrip("+~")

"""The protocol specification: what a `configs/protocol/*.yaml` file may say, validated up front.

A protocol compares methods on equal terms: every method is tuned on the validation split with the
same sampler, the same number of trials and the same shared search space (plus its own
parameters), then its best configuration is retrained with the same seeds as every other method and
tested once. `ProtocolSpec.from_dict` raises ConfigError naming the first bad key before anything
runs.

Factors (ablations): `factors: {NAME: {levels: {LEVEL: overrides, ...}, retune: bool, methods: [...]}}`.
The first level is the base (the method's tuned config as is, so its overrides are empty); every
other level's overrides are applied on top of the tuned config (or re-tuned with them when
`retune: true`). A level may give one list for every method or `{METHOD: [...], default: [...]}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from finealign.checks import check_bool, check_choice, check_int, check_known_keys, check_number, close_matches
from finealign.errors import ConfigError
from finealign.sweeps.spec_parts import ParamSpec, check_objective, params_from_record, parse_overrides, parse_params

TUNE_SAMPLERS = ("tpe", "random")
# what a protocol fixes itself; a method or the file setting them would break the protocol
RESERVED_KEYS = ("seed", "output_dir", "eval.split")
#: factor and level names become directory and study names (`final/M/FACTOR=LEVEL/`)
_NAME = re.compile(r"[A-Za-z0-9_]+")
#: in a per-method level mapping, the overrides of every method not named
DEFAULT_LEVEL_KEY = "default"


def _int(value: Any, where: str, low: int) -> int:
    check_int(where, value, low=low)
    return int(value)


def _overrides(raw: Any, where: str) -> tuple[str, ...]:
    return parse_overrides(raw, where, RESERVED_KEYS, ", which the protocol sets itself (tune: val, final: test)")


def _params(raw: Any, where: str) -> tuple[ParamSpec, ...]:
    return parse_params(raw, where, RESERVED_KEYS, " (the protocol sets it)")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    overrides: tuple[str, ...]  # e.g. aligner=hard, or method=chan
    params: tuple[ParamSpec, ...]  # its own search space, beside the shared one

    @classmethod
    def from_raw(cls, name: str, raw: Any) -> MethodSpec:
        where = f"methods.{name}"
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping with overrides and params, got {raw!r}")
        check_known_keys(raw, ("overrides", "params"), where)
        overrides = _overrides(raw.get("overrides"), f"{where}.overrides")
        if not overrides:
            raise ConfigError(f"{where}.overrides is empty: say what the method is (e.g. [aligner={name}])")
        return cls(name=name, overrides=overrides, params=_params(raw.get("params"), f"{where}.params"))


@dataclass(frozen=True)
class LevelSpec:
    """One level of a factor: its overrides per method (`default`: every method not named)."""

    name: str
    overrides: dict[str, tuple[str, ...]]

    def for_method(self, method: str) -> tuple[str, ...]:
        return self.overrides.get(method, self.overrides.get(DEFAULT_LEVEL_KEY, ()))


@dataclass(frozen=True)
class FactorSpec:
    """What an ablation varies: ordered levels (the first is the base), whether each non-base level
    is tuned again with its own study, and which methods run it (empty: all)."""

    name: str
    levels: tuple[LevelSpec, ...]
    retune: bool = False
    methods: tuple[str, ...] = ()

    ALLOWED = ("levels", "retune", "methods")

    @property
    def base(self) -> LevelSpec:
        return self.levels[0]

    def runs(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def level(self, name: str) -> LevelSpec:
        for level in self.levels:
            if level.name == name:
                return level
        raise ConfigError(f"factor {self.name!r} has no level {name!r} ({', '.join(lv.name for lv in self.levels)})")

    @classmethod
    def from_raw(cls, name: str, raw: Any, methods: tuple[str, ...]) -> FactorSpec:
        where = f"factors.{name}"
        _check_name(name, "factor")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping with levels (and retune, methods), got {raw!r}")
        check_known_keys(raw, cls.ALLOWED, where)
        retune = raw.get("retune", False)
        check_bool(f"{where}.retune", retune)
        chosen = raw.get("methods")
        if chosen is not None:
            if not isinstance(chosen, (list, tuple)) or not chosen:
                raise ConfigError(f"{where}.methods must be a non-empty list of method names, got {chosen!r}")
            for m in chosen:
                _known_method(str(m), methods, f"{where}.methods")
            chosen = tuple(str(m) for m in chosen)
        running = chosen or methods
        levels_raw = raw.get("levels")
        if not isinstance(levels_raw, Mapping) or len(levels_raw) < 2:
            raise ConfigError(
                f"{where}.levels must map at least two level names to overrides (the first is the base), "
                f"got {levels_raw!r}"
            )
        levels = tuple(_level(str(k), v, running, f"{where}.levels.{k}") for k, v in levels_raw.items())
        base = levels[0]
        if any(base.for_method(m) for m in running):
            raise ConfigError(
                f"{where}.levels.{base.name}: the first level is the base (each method's tuned config as is), so "
                "its overrides must be empty; put the level that changes something after it"
            )
        return cls(name=name, levels=levels, retune=retune, methods=chosen or ())


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r} must be letters, digits and '_' (it names directories and studies)")


def _known_method(name: str, methods: tuple[str, ...], where: str) -> None:
    if name not in methods:
        close = close_matches(name, methods, n=2)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"{where}: no method {name!r}{hint} (methods: {', '.join(methods)})")


def _level(name: str, raw: Any, running: tuple[str, ...], where: str) -> LevelSpec:
    _check_name(name, "level")
    if raw is None or isinstance(raw, (list, tuple)):
        return LevelSpec(name, {DEFAULT_LEVEL_KEY: _overrides(raw, where)})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a list of overrides or {{METHOD: [...], default: [...]}}, got {raw!r}")
    per: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        key = str(key)
        if key != DEFAULT_LEVEL_KEY:
            _known_method(key, running, where)
        per[key] = _overrides(value, f"{where}.{key}")
    missing = [m for m in running if m not in per] if DEFAULT_LEVEL_KEY not in per else []
    if missing:
        raise ConfigError(f"{where} gives no overrides for {', '.join(missing)}: name them or add default: [...]")
    return LevelSpec(name, per)


@dataclass(frozen=True)
class TuneSpec:
    sampler: str = "tpe"
    n_trials: int = 8  # per method: the equal budget
    seed: int = 0  # every tuning trial of every method trains with this seed (paired)
    metric: str = "rsum"  # maximised on the validation split
    overrides: tuple[str, ...] = ()  # tuning only (e.g. a smaller validation gallery)
    n_startup_trials: int = 10  # TPE: random trials before it models (Optuna's default)


@dataclass(frozen=True)
class BootstrapSpec:
    resamples: int = 9999
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class ProtocolSpec:
    """A whole validated protocol (see configs/protocol/toy.yaml for a commented example)."""

    study: str
    methods: tuple[MethodSpec, ...]
    shared: tuple[ParamSpec, ...]
    tune: TuneSpec
    seeds: tuple[int, ...]
    reference: str
    overrides: tuple[str, ...] = ()  # every run, tuning and final
    test_overrides: tuple[str, ...] = ()  # final runs only
    cost_overrides: tuple[str, ...] = ()  # the first seed's final run only (timing is costly)
    experiment: str = "config"
    objective: str | None = None  # "module:function" replacing compose + run_experiment (tests)
    bootstrap: BootstrapSpec = BootstrapSpec()
    heartbeat_s: int = 30
    factors: tuple[FactorSpec, ...] = field(default=())  # ablations: see FactorSpec

    TOP_KEYS = (
        "study", "methods", "shared", "tune", "seeds", "reference", "overrides", "test", "costs", "experiment",
        "objective", "bootstrap", "heartbeat_s", "factors",
    )  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProtocolSpec:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a protocol config must be a mapping, got {type(raw).__name__}")
        check_known_keys(raw, cls.TOP_KEYS, "the protocol config")
        study = raw.get("study")
        if not isinstance(study, str) or not study or any(c in study for c in "/\\ ."):
            raise ConfigError(f"study must be a name without slashes, dots or spaces, got {study!r}")
        methods_raw = raw.get("methods") or {}
        if not isinstance(methods_raw, Mapping) or not methods_raw:
            raise ConfigError("methods is empty: list the methods to compare (name: {overrides: [aligner=...]})")
        methods = tuple(MethodSpec.from_raw(str(k), v) for k, v in methods_raw.items())
        shared = _params(raw.get("shared"), "shared")
        shared_names = {p.name for p in shared}
        for m in methods:
            clash = shared_names & {p.name for p in m.params}
            if clash:
                raise ConfigError(
                    f"methods.{m.name}.params {sorted(clash)} are shared params: tune them once, in shared"
                )
        tune_raw = dict(raw.get("tune") or {})
        check_known_keys(tune_raw, ("sampler", "n_trials", "seed", "metric", "overrides", "n_startup_trials"), "tune")
        tune = TuneSpec(
            sampler=tune_raw.get("sampler", "tpe"),
            n_trials=_int(tune_raw.get("n_trials", 8), "tune.n_trials", 1),
            seed=_int(tune_raw.get("seed", 0), "tune.seed", 0),
            metric=str(tune_raw.get("metric", "rsum")),
            overrides=_overrides(tune_raw.get("overrides"), "tune.overrides"),
            n_startup_trials=_int(tune_raw.get("n_startup_trials", 10), "tune.n_startup_trials", 0),
        )
        check_choice("tune.sampler", tune.sampler, TUNE_SAMPLERS)
        seeds_raw = raw.get("seeds", [0, 1, 2])
        if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
            seeds_raw = list(range(_int(seeds_raw, "seeds", 1)))  # shorthand: seeds: 3 → [0, 1, 2]
        if not isinstance(seeds_raw, (list, tuple)) or not seeds_raw:
            raise ConfigError(f"seeds must be a count or a non-empty list of ints, got {seeds_raw!r}")
        seeds = tuple(_int(s, "seeds[]", 0) for s in seeds_raw)
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds {list(seeds)} hold duplicates")
        names = [m.name for m in methods]
        reference = raw.get("reference", names[0])
        if reference not in names:
            raise ConfigError(f"reference {reference!r} is not one of the methods ({', '.join(names)})")
        test_raw = dict(raw.get("test") or {})
        check_known_keys(test_raw, ("overrides",), "test")
        costs_raw = dict(raw.get("costs") or {})
        check_known_keys(costs_raw, ("overrides",), "costs")
        boot_raw = dict(raw.get("bootstrap") or {})
        check_known_keys(boot_raw, ("resamples", "confidence", "seed"), "bootstrap")
        boot = BootstrapSpec(
            resamples=_int(boot_raw.get("resamples", 9999), "bootstrap.resamples", 100),
            confidence=boot_raw.get("confidence", 0.95),
            seed=_int(boot_raw.get("seed", 0), "bootstrap.seed", 0),
        )
        check_number("bootstrap.confidence", boot.confidence, low=0, strict=True, high=1, high_strict=True)
        objective = raw.get("objective")
        check_objective(objective)
        factors_raw = raw.get("factors") or {}
        if not isinstance(factors_raw, Mapping):
            raise ConfigError(f"factors must map factor names to {{levels: ...}}, got {factors_raw!r}")
        factors = tuple(FactorSpec.from_raw(str(k), v, tuple(names)) for k, v in factors_raw.items())
        return cls(
            study=study, methods=methods, shared=shared, tune=tune, seeds=seeds, reference=reference,
            overrides=_overrides(raw.get("overrides"), "overrides"),
            test_overrides=_overrides(test_raw.get("overrides"), "test.overrides"),
            cost_overrides=_overrides(costs_raw.get("overrides"), "costs.overrides"),
            experiment=str(raw.get("experiment", "config")), objective=objective, bootstrap=boot,
            heartbeat_s=_int(raw.get("heartbeat_s", 30), "heartbeat_s", 1), factors=factors,
        )  # fmt: skip

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"no method {name!r} in protocol {self.study!r} ({', '.join(m.name for m in self.methods)})")

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> ProtocolSpec:
        """The spec from its JSON record (protocol.json's "spec", i.e. `to_dict()`). A record
        written before a key existed gets what that version did: no factors, and TPE's start-up
        count of then (a quarter of the budget, 2 to 10)."""
        tune = dict(d["tune"])
        tune.setdefault("n_startup_trials", min(10, max(2, int(tune["n_trials"]) // 4)))
        return cls(
            study=d["study"],
            methods=tuple(MethodSpec(m["name"], tuple(m["overrides"]), params_from_record(m["params"]))
                          for m in d["methods"]),
            shared=params_from_record(d["shared"]),
            tune=TuneSpec(**{**tune, "overrides": tuple(tune["overrides"])}),
            seeds=tuple(d["seeds"]), reference=d["reference"], overrides=tuple(d["overrides"]),
            test_overrides=tuple(d["test_overrides"]), cost_overrides=tuple(d["cost_overrides"]),
            experiment=d["experiment"], objective=d["objective"], bootstrap=BootstrapSpec(**d["bootstrap"]),
            heartbeat_s=d["heartbeat_s"],
            factors=tuple(
                FactorSpec(f["name"], tuple(LevelSpec(lv["name"], {k: tuple(v) for k, v in lv["overrides"].items()})
                                            for lv in f["levels"]), f["retune"], tuple(f["methods"]))
                for f in d.get("factors", ())
            ),
        )  # fmt: skip

    def factor(self, name: str) -> FactorSpec:
        for f in self.factors:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.factors) or "none"
        raise ConfigError(f"no factor {name!r} in protocol {self.study!r} (factors: {known})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

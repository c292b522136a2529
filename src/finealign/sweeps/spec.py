"""The sweep specification: what a `configs/sweep/*.yaml` file may say, validated up front.

A sweep file names the component choices to ablate (each one a Hydra config-group override such as
`aligner=hard`), the hyperparameters that exist only for some choices (`aligner.epsilon` only when
aligner=tokenflow), unconditional hyperparameters (`train.lr`), the metrics to optimise and how
trials are proposed. `SweepSpec.from_dict` turns the composed file into frozen dataclasses and
raises ConfigError naming the first bad key, before any trial starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from finealign.checks import (
    check_choice,
    check_int,
    check_known_keys,
    check_number,
    check_positive_int,
    check_text,
)
from finealign.errors import ConfigError
from finealign.sweeps.spec_parts import ParamSpec, check_objective, override_key, parse_overrides, parse_params

SAMPLERS = ("grid", "tpe", "nsga2", "random")
SEED_MODES = ("paired", "per_trial")
DIRECTIONS = ("maximize", "minimize")
Direction = Literal["maximize", "minimize"]
PRUNERS = ("none", "median", "percentile", "hyperband")


@dataclass(frozen=True)
class ObjectiveSpec:
    metric: str
    direction: Direction = "maximize"

    @classmethod
    def from_raw(cls, raw: Any, index: int) -> ObjectiveSpec:
        where = f"objectives[{index}]"
        if isinstance(raw, str):  # shorthand: "rsum" maximises
            raw = {"metric": raw}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a metric name or {{metric, direction}}, got {raw!r}")
        check_known_keys(raw, ("metric", "direction"), where)
        metric, direction = raw.get("metric"), raw.get("direction", "maximize")
        check_text(f"{where}.metric", metric, what="a metric name such as rsum")
        check_choice(f"{where}.direction", direction, DIRECTIONS)
        return cls(metric=str(metric), direction=direction)


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "none"
    n_startup_trials: int = 2  # trials that are never pruned (the median needs a history)
    n_warmup_steps: int = 0  # epochs of each trial that are never pruned
    percentile: float = 25.0  # percentile pruner: prune below this percentile

    @classmethod
    def from_raw(cls, raw: Any) -> PrunerSpec:
        if raw is None or isinstance(raw, str):
            raw = {"name": raw or "none"}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"pruner must be a name or a mapping, got {raw!r}")
        check_known_keys(raw, ("name", "n_startup_trials", "n_warmup_steps", "percentile"), "pruner")
        spec = cls(**dict(raw))
        check_choice("pruner.name", spec.name, PRUNERS)
        for key in ("n_startup_trials", "n_warmup_steps"):
            value = getattr(spec, key)
            check_int(f"pruner.{key}", value, low=0)
        check_number("pruner.percentile", spec.percentile, low=0, strict=True, high=100, high_strict=True)
        return spec


@dataclass(frozen=True)
class SweepSpec:
    """A whole validated sweep (see configs/sweep/toy.yaml for a commented example)."""

    study: str
    sampler: str
    objectives: tuple[ObjectiveSpec, ...]
    choices: dict[str, dict[str, tuple[ParamSpec, ...]]]  # group → option → its conditional params
    params: tuple[ParamSpec, ...] = ()  # unconditional
    overrides: tuple[str, ...] = ()  # fixed for every trial
    experiment: str = "config"  # primary config that finealign.config.compose starts from
    objective: str | None = None  # "module:function" replacing compose + run_experiment
    n_trials: int | None = None  # study-wide total; grid: all points by default
    seed: int = 0
    # paired: every trial trains with `seed` (same initialisation where shapes allow, same batch
    # order), so two trials differ only in what the sweep varies; per_trial: a seed per trial number
    seeds: str = "paired"
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    heartbeat_s: int = 10  # RUNNING trials silent for 2x this long are failed and retried
    plot_x: str = "score_latency_ms"
    plot_y: str = "rsum"

    TOP_KEYS = (
        "study", "sampler", "objectives", "choose", "params", "overrides", "experiment", "objective",
        "n_trials", "seed", "seeds", "pruner", "heartbeat_s", "plot",
    )  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SweepSpec:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a sweep config must be a mapping, got {type(raw).__name__}")
        check_known_keys(raw, cls.TOP_KEYS, "the sweep config")
        study = raw.get("study")
        if not isinstance(study, str) or not study or any(c in study for c in "/\\ "):
            raise ConfigError(f"study must be a name without slashes or spaces, got {study!r}")
        sampler = raw.get("sampler", "tpe")
        check_choice("sampler", sampler, SAMPLERS)
        objectives = tuple(ObjectiveSpec.from_raw(o, i) for i, o in enumerate(raw.get("objectives") or ()))
        if not objectives:
            raise ConfigError("objectives is empty: name at least one metric, e.g. [{metric: rsum}]")
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"objectives name a metric twice: {metrics}")
        choices = _parse_choices(raw.get("choose") or {})
        params = parse_params(raw.get("params"), "params")
        overrides = parse_overrides(raw.get("overrides"), "overrides")
        pruner = PrunerSpec.from_raw(raw.get("pruner"))
        if pruner.name != "none" and len(objectives) > 1:
            raise ConfigError(
                f"pruner {pruner.name!r} with {len(objectives)} objectives: Optuna prunes single-objective "
                "studies only; set pruner: none or keep one objective"
            )
        n_trials = raw.get("n_trials")
        check_positive_int("n_trials", n_trials, optional=True)
        if n_trials is None and sampler != "grid":
            raise ConfigError(f"sampler {sampler!r} needs n_trials (only grid mode defaults to every point)")
        seed = raw.get("seed", 0)
        check_int("seed", seed, low=0)
        seeds = raw.get("seeds", "paired")
        check_choice("seeds", seeds, SEED_MODES)
        heartbeat_s = raw.get("heartbeat_s", 10)
        check_int("heartbeat_s", heartbeat_s, note=" (seconds)")
        plot = dict(raw.get("plot") or {})
        check_known_keys(plot, ("x", "y"), "plot")
        objective = raw.get("objective")
        check_objective(objective)
        spec = cls(
            study=study,
            sampler=sampler,
            objectives=objectives,
            choices=choices,
            params=params,
            overrides=overrides,
            experiment=str(raw.get("experiment", "config")),
            objective=objective,
            n_trials=n_trials,
            seed=seed,
            seeds=seeds,
            pruner=pruner,
            heartbeat_s=heartbeat_s,
            plot_x=str(plot.get("x", "score_latency_ms")),
            plot_y=str(plot.get("y", objectives[0].metric)),
        )
        spec._check_consistency()
        return spec

    # -- derived ------------------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[Direction]:
        return [o.direction for o in self.objectives]

    def all_params(self) -> list[ParamSpec]:
        found = list(self.params)
        for options in self.choices.values():
            for params in options.values():
                found.extend(params)
        return found

    def _check_consistency(self) -> None:
        swept = set(self.choices)
        seen: dict[str, ParamSpec] = {}
        for p in self.all_params():
            if p.name in swept:
                raise ConfigError(f"param {p.name!r} has the name of a swept component group")
            if p.name in seen and seen[p.name].signature() != p.signature():
                raise ConfigError(
                    f"param {p.name!r} is declared twice with different kinds/log/values; Optuna needs "
                    "one kind per name (use the same type and log flag, and the same values list)"
                )
            seen[p.name] = p
        unconditional = {p.name for p in self.params}
        for group, options in self.choices.items():
            for option, params in options.items():
                clash = unconditional & {p.name for p in params}
                if clash:
                    raise ConfigError(f"{group}={option}: {sorted(clash)} is also an unconditional param")
        for o in self.overrides:
            key = override_key(o)
            if key in swept or key in seen:
                raise ConfigError(f"fixed override {o!r} sets {key!r}, which the sweep varies")
        if self.sampler == "grid":
            for p in self.all_params():
                p.grid_values()  # raises when a range has no grid values

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy, stored on the study so that `finealign report` needs no YAML."""
        return asdict(self)


def _parse_choices(raw: Any) -> dict[str, dict[str, tuple[ParamSpec, ...]]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"choose must map a config group to its options, got {raw!r}")
    out: dict[str, dict[str, tuple[ParamSpec, ...]]] = {}
    for group, options in raw.items():
        if isinstance(options, (list, tuple)):  # shorthand: options without conditional params
            options = {name: None for name in options}
        if not isinstance(options, Mapping) or not options:
            raise ConfigError(f"choose.{group} must list at least one option, got {options!r}")
        parsed: dict[str, tuple[ParamSpec, ...]] = {}
        for option, params in options.items():
            parsed[str(option)] = parse_params(params, f"choose.{group}.{option}")
        out[str(group)] = parsed
    return out

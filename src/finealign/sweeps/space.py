"""From a SweepSpec to trial parameters: Optuna suggestions, grid points, Hydra overrides.

Parameter names are the Hydra override keys themselves (`aligner`, `aligner.epsilon`, `train.lr`),
so a trial's params turn into its overrides with no translation table.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import optuna

from finealign.sweeps.spec import SweepSpec
from finealign.sweeps.spec_parts import ParamSpec

Point = dict[str, Any]


def suggest_param(trial: optuna.Trial, p: ParamSpec) -> Any:
    # Grid points are enqueued as fixed params, and Optuna returns those; suggesting over the
    # declared range (not the grid list) keeps one distribution kind per name in every mode.
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, list(p.values))
    assert p.low is not None and p.high is not None  # ParamSpec gives a numeric range both ends
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)


def suggest(trial: optuna.Trial, spec: SweepSpec) -> Point:
    """Ask the trial for one value per active parameter: component choices first, then the
    parameters of the chosen components (conditional search space), then unconditional ones."""
    point: Point = {}
    for group, options in spec.choices.items():
        option = trial.suggest_categorical(group, list(options))
        point[group] = option
        for p in options[option]:
            point[p.name] = suggest_param(trial, p)
    for p in spec.params:
        point[p.name] = suggest_param(trial, p)
    return point


def grid_points(spec: SweepSpec) -> list[Point]:
    """Every combination of component options × the grid values of the params active for them.

    Conditional params multiply only their own option: aligner ∈ {hard, tokenflow} with
    aligner.epsilon ∈ {0.05, 0.1} gives 3 points (hard, tokenflow/0.05, tokenflow/0.1), not 4.
    """
    per_group: list[list[Point]] = []
    for group, options in spec.choices.items():
        branch: list[Point] = []
        for option, params in options.items():
            for values in itertools.product(*(p.grid_values() for p in params)):
                branch.append({group: option, **{p.name: v for p, v in zip(params, values)}})
        per_group.append(branch)
    names = [p.name for p in spec.params]
    per_group.append([dict(zip(names, v)) for v in itertools.product(*(p.grid_values() for p in spec.params))])
    points = []
    for parts in itertools.product(*per_group):
        merged: Point = {}
        for part in parts:
            merged.update(part)
        points.append(merged)
    return points


def point_key(point: Point) -> str:
    """A canonical string for a grid point, to spot duplicates across workers and restarts."""
    return json.dumps(point, sort_keys=True, default=str)


def to_overrides(point: Point) -> list[str]:
    """`{'aligner': 'hard', 'train.lr': 0.001}` → `['aligner=hard', 'train.lr=0.001']`."""
    return [f"{key}={_format(value)}" for key, value in point.items()]


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)

"""What a trial runs. By default: compose the experiment config with the trial's overrides and
train/evaluate it with the engine. `objective: module:function` in a sweep file (or the Python
API's `objective=`) replaces it with any callable `(overrides, on_validation) -> metrics`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import partial
from typing import Any

from finealign.errors import ConfigError
from finealign.sweeps.runner import Objective, ValidationHook


def run_composed(
    overrides: list[str], on_validation: ValidationHook, *, experiment: str = "config"
) -> Mapping[str, Any]:
    from finealign.config import compose
    from finealign.engine.experiment import run_experiment

    return run_experiment(compose(experiment, overrides), on_validation=on_validation, overrides=overrides)


def load_objective(ref: str | None, experiment: str = "config") -> Objective:
    """`None` → the engine; `"package.module:function"` → that function."""
    if ref is None:
        return partial(run_composed, experiment=experiment)
    module_name, _, attr = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"objective {ref!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ConfigError(f"objective {ref!r} is not callable")
    return target

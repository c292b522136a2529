"""Optuna sweeps over the registry, composed with Hydra (see docs/sweeps.md).

A sweep file (configs/sweep/*.yaml) declares component choices (Hydra config-group overrides),
conditional hyperparameter ranges and objectives; `run_sweep` turns each trial into overrides for
`finealign.config.compose`, runs it, and records the outcome in an Optuna RDB storage.
"""

from finealign.sweeps.loader import LoadedSweep, load_sweep
from finealign.sweeps.orchestrate import SweepResult, load_report, run_sweep
from finealign.sweeps.spec import ObjectiveSpec, SweepSpec
from finealign.sweeps.spec_parts import ParamSpec

__all__ = [
    "LoadedSweep",
    "ObjectiveSpec",
    "ParamSpec",
    "SweepResult",
    "SweepSpec",
    "load_report",
    "load_sweep",
    "run_sweep",
]

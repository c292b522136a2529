"""The `finealign profile` config (configs/profile.yaml) read into the profiler's own dataclasses.

The YAML is flat, as the command line is (`nv=100 repeats=5 mean_max.direction=both`): each key
belongs to exactly one dataclass — ProfileSettings (how to measure), ProblemShape (the problem
size) or ProfileRunOptions (what to run and where) — and a node named after an aligner holds that
aligner's options (its configs/aligner/NAME.yaml, composed in by the command).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from finealign.errors import ConfigError
from finealign.profiling.inputs import ProblemShape
from finealign.profiling.measure import ProfileSettings, resolve_aligners
from finealign.profiling.scaling import AXES, check_axis
from finealign.registry import build_config


@dataclass
class ProfileRunOptions:
    """What `finealign profile` runs and where it writes."""

    aligners: Any = "all"  # all | NAME | [NAME, ...]
    scaling: Any = "n"  # none | all | an axis (n, tokens, dim) | a list of axes
    n_values: list[int] | None = None  # null: four sizes doubling around the base size
    tokens_values: list[int] | None = None
    dim_values: list[int] | None = None
    trace: bool = True  # torch.profiler traces (TensorBoard) per aligner
    out: str = "runs/profile"  # tables/plots in out/<timestamp>/, traces in out/traces/<timestamp>/
    eval_results: str | None = None  # a results.csv to join: recall vs latency plot
    progress: bool = True

    def __post_init__(self) -> None:
        for axis in AXES:
            values = getattr(self, f"{axis}_values")
            if values is not None and (
                not isinstance(values, list) or not values
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
            ):  # fmt: skip
                raise ConfigError(f"{axis}_values must be null or a list of positive ints, got {values!r}")

    def axes(self) -> list[str]:
        spec = self.scaling
        if spec is None or spec == "none":
            return []
        if spec == "all":
            return list(AXES)
        return [check_axis(a) for a in ([spec] if isinstance(spec, str) else list(spec))]

    def values(self) -> dict[str, list[int]]:
        return {a: getattr(self, f"{a}_values") for a in self.axes() if getattr(self, f"{a}_values")}


@dataclass
class ProfileConfig:
    names: list[str]
    shape: ProblemShape
    settings: ProfileSettings
    run: ProfileRunOptions


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def read_profile_config(container: dict[str, Any], aligner_nodes: set[str]) -> ProfileConfig:
    """Split a composed profile config (plain dict) into its dataclasses; each is validated by its
    own __post_init__. `aligner_nodes` are the keys that hold aligner option nodes."""
    shape_keys, run_keys = _fields(ProblemShape), _fields(ProfileRunOptions)
    setting_keys = [k for k in _fields(ProfileSettings) if k != "aligner_options"]
    known = {*shape_keys, *run_keys, *setting_keys, *aligner_nodes}
    for key in container:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"profile config has no key {key!r}{hint}")
    run = build_config(ProfileRunOptions, {k: container[k] for k in run_keys if k in container}, "profile")
    names = resolve_aligners(run.aligners if isinstance(run.aligners, str) else [str(a) for a in run.aligners])
    options = {}
    for name in names:
        node = dict(container.get(name) or {})
        node.pop("name", None)
        options[name] = node
    settings = build_config(
        ProfileSettings,
        {**{k: container[k] for k in setting_keys if k in container}, "aligner_options": options},
        "profile",
    )
    shape = build_config(ProblemShape, {k: container[k] for k in shape_keys if k in container}, "profile")
    run.axes()  # an unknown axis fails here, before anything is measured
    return ProfileConfig(names=names, shape=shape, settings=settings, run=run)

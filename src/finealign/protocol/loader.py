"""Load `configs/protocol/NAME.yaml` through Hydra and split command-line overrides.

`finealign bench protocol=toy protocol.tune.n_trials=2 data.num_train=64`:
  - `protocol=NAME` picks the file (default: `flickr8k`),
  - `protocol.KEY=VALUE` changes the protocol itself,
  - everything else is added to every run of every method (tuning and final).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finealign.errors import ConfigError
from finealign.protocol.spec import ProtocolSpec
from finealign.sweeps.loader import load_group_file, split_group_overrides
from finealign.sweeps.spec_parts import ParamSpec, override_key

DEFAULT = "flickr8k"


def available_protocols() -> list[str]:
    """Protocol files in finealign's tree and every plugin's config folder."""
    from finealign.config import group_options

    return sorted(group_options("protocol"))


def _sample(p: ParamSpec) -> Any:
    return p.values[0] if p.kind == "categorical" else p.low


def check_methods_compose(spec: ProtocolSpec, extra: Iterable[str] = ()) -> None:
    """Compose and validate every method once, with one value of each of its parameters, and every
    factor level of every method as its final runs will be, before anything runs: a key that does
    not exist (or a bad value) is one ConfigError naming the method (and factor and level), not a
    whole tuning budget of failed trials."""
    from finealign.config import compose, validate
    from finealign.protocol.cells import level_cells, level_overrides
    from finealign.protocol.recipe import final_overrides, tune_overrides
    from finealign.sweeps.space import to_overrides

    for method in spec.methods:
        params = {p.name: _sample(p) for p in (*spec.shared, *method.params)}
        try:
            validate(compose(spec.experiment, [*tune_overrides(spec, method, extra), *to_overrides(params)]))
        except ConfigError as exc:
            raise ConfigError(f"protocol {spec.study!r}, method {method.name!r}: {exc}") from exc
    for cell in level_cells(spec):
        method = spec.method(cell.method)
        params = {p.name: _sample(p) for p in (*spec.shared, *method.params)}
        # the folder a run of this cell will get (its name is parsed as an override too)
        where = cell.final_dir(Path("runs") / "bench" / spec.study, spec.seeds[0])
        overrides = final_overrides(spec, method, params, 0, where, extra, level=level_overrides(spec, cell))
        try:
            validate(compose(spec.experiment, overrides))
        except ConfigError as exc:
            raise ConfigError(
                f"protocol {spec.study!r}, method {method.name!r}, factor {cell.factor!r}, level {cell.level!r}: {exc}"
            ) from exc


def check_tune_metric(spec: ProtocolSpec) -> None:
    """`tune.metric` must be a metric the engine reports for a gallery (engine.metrics.GALLERY_METRICS,
    or `folds_<name>` with coco folds): a typo is one ConfigError with the closest names before any
    trial, not a whole budget of trials that fail for want of it. A protocol with its own
    `objective` names its own metrics: not checked."""
    import difflib

    from finealign.engine.metrics import GALLERY_METRICS

    if spec.objective is not None:
        return
    metric = spec.tune.metric
    known = [*GALLERY_METRICS, *(f"folds_{m}" for m in GALLERY_METRICS)]
    if metric in known:
        return
    close = difflib.get_close_matches(metric, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"protocol {spec.study!r}: tune.metric {metric!r} is no metric the engine reports; {hint}"
        f"(known: {', '.join(GALLERY_METRICS)}, and folds_<name> with eval.coco_folds)"
    )


def load_protocol(args: Iterable[str] = ()) -> tuple[ProtocolSpec, tuple[str, ...]]:
    """(validated spec, overrides for every run)."""
    name, own, extra = split_group_overrides(args, "protocol", DEFAULT)
    raw = load_group_file("protocol", name, own)
    spec = ProtocolSpec.from_dict(raw)
    check_tune_metric(spec)
    varied = {p.name for p in spec.shared} | {p.name for m in spec.methods for p in m.params}
    check_methods_compose(spec, extra)
    for o in extra:
        if override_key(o) in varied:
            raise ConfigError(
                f"override {o!r} sets {override_key(o)!r}, which the protocol tunes; drop it or edit the file"
            )
    return spec, tuple(extra)

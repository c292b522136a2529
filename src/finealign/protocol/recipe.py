"""What each run of a protocol gets: a tuning study as a sweep, its sampler, the overrides of a
tuning trial and of a final run, and what a finished study says (the best params)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from finealign.protocol.cells import Cell, study_name, tuned_away
from finealign.protocol.spec import MethodSpec, ProtocolSpec
from finealign.sweeps.loader import merge_overrides
from finealign.sweeps.runner import ERROR_ATTR
from finealign.sweeps.space import to_overrides
from finealign.sweeps.spec import ObjectiveSpec, SweepSpec

# Tuning trials: validation only, nothing saved that tuning does not need.
TUNE_FIXED = ("eval.split=val", "eval.cost_repeats=0", "eval.save_ranks=false", "train.save_model=false")
FINAL_FIXED = ("eval.split=test", "eval.save_ranks=true", "train.save_model=false")


@dataclass
class TuneOutcome:
    complete: int = 0
    failed: int = 0
    best_params: dict[str, Any] | None = None
    best_value: float | None = None
    best_trial: int | None = None
    errors: list[str] = field(default_factory=list)


def tune_sweep_spec(spec: ProtocolSpec, method: MethodSpec, cell: Cell | None = None) -> SweepSpec:
    """One method's tuning (at its base, or at a retuned level: then without the params the level
    fixes) as a sweep: shared params first (so a seeded sampler proposes the same shared values to
    every method in its random start-up), then the method's own."""
    cell = cell or Cell(method.name)
    fixed = tuned_away(spec, cell)
    return SweepSpec(
        study=study_name(spec, cell), sampler=spec.tune.sampler,
        objectives=(ObjectiveSpec(spec.tune.metric, "maximize"),), choices={},
        params=tuple(p for p in (*spec.shared, *method.params) if p.name not in fixed), overrides=(),
        experiment=spec.experiment, objective=spec.objective, n_trials=spec.tune.n_trials, seed=spec.tune.seed,
        seeds="paired", heartbeat_s=spec.heartbeat_s, plot_x="score_latency_ms", plot_y=spec.tune.metric,
    )  # fmt: skip


def tune_sampler(spec: ProtocolSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The protocol's sampler: TPE with `tune.n_startup_trials` random trials first (constant liar:
    parallel workers do not all propose the point next to the current best), or random."""
    if spec.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # group/constant_liar are flagged experimental; used on purpose
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=spec.tune.n_startup_trials
        )


def tune_overrides(
    spec: ProtocolSpec, method: MethodSpec, extra: Iterable[str] = (), level: Iterable[str] = ()
) -> tuple[str, ...]:
    """A tuning trial's fixed overrides; a retuned level's come last (they define the cell)."""
    return merge_overrides([*spec.overrides, *extra, *method.overrides, *spec.tune.overrides, *level], TUNE_FIXED)


def final_overrides(
    spec: ProtocolSpec,
    method: MethodSpec,
    best: dict[str, Any],
    seed: int,
    directory: Path,
    extra: Iterable[str] = (),
    *,
    with_costs: bool = False,
    level: Iterable[str] = (),
) -> list[str]:
    """A final run's overrides: the level's come after the tuned params (a level may override a
    tuned key, e.g. the head)."""
    base = [*spec.overrides, *extra, *method.overrides, *to_overrides(best), *spec.test_overrides]
    if with_costs:
        base += list(spec.cost_overrides)
    base += list(level)
    return list(merge_overrides(base, [*FINAL_FIXED, f"seed={seed}", f"output_dir={directory}"]))


def trial_sampler_seed(spec: ProtocolSpec, trial_number: int) -> int:
    """The sampler seed of tuning trial k: the same for every method and every worker, so trial k
    of every method draws the same shared values during the random start-up, whoever claims it."""
    return (spec.tune.seed * 1_000_003 + trial_number * 7_919) % (2**31)


def tune_outcome(study: optuna.Study) -> TuneOutcome:
    outcome = TuneOutcome()
    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.state == states.COMPLETE:
            outcome.complete += 1
        elif t.state == states.FAIL and ERROR_ATTR in t.user_attrs:
            outcome.failed += 1
            outcome.errors.append(str(t.user_attrs[ERROR_ATTR]))
    if outcome.complete:
        best = study.best_trial
        outcome.best_params, outcome.best_value, outcome.best_trial = dict(best.params), best.value, best.number
    return outcome

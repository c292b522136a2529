"""Create or join an Optuna study for a sweep: samplers, pruners, and the grid queue.

Grid mode never lets a sampler invent points: the worker that creates the study enqueues every
grid point once (each a WAITING trial carrying its `grid_key`), then marks the study with
`grid_points`; workers only pop WAITING trials, which the storage hands to exactly one of them.
Creation is atomic (a second `create_study` of the same name fails), so two workers started
together cannot both enqueue the grid.

A queued budget (`open_study(queue_budget=True)`, what `finealign bench` uses) does the same for a
sampler: the creator enqueues `n_trials` empty trials, whose params the sampler fills in when a
worker claims one. Workers only claim, so the budget is spent exactly once however many workers
share it (asking for new trials, two workers could both see n_trials − 1 and both ask).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from finealign.errors import ConfigError
from finealign.sweeps.space import grid_points, point_key
from finealign.sweeps.spec import PrunerSpec, SweepSpec

SPEC_ATTR = "sweep_spec"
FINGERPRINT_ATTR = "sweep_fingerprint"
GRID_ATTR = "grid_points"
QUEUED_ATTR = "budget_queued"

SAMPLERS: dict[str, Callable[[SweepSpec, int], optuna.samplers.BaseSampler]] = {
    # grid trials are all enqueued; the sampler only answers params a queued point lacks
    "grid": lambda spec, seed: optuna.samplers.RandomSampler(seed=seed),
    "random": lambda spec, seed: optuna.samplers.RandomSampler(seed=seed),
    # constant_liar: parallel workers don't all propose the point next to the current best
    "tpe": lambda spec, seed: optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=min(10, max(2, (spec.n_trials or 10) // 4)),
    ),  # fmt: skip
    "nsga2": lambda spec, seed: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=min(50, max(4, (spec.n_trials or 50) // 4))
    ),
}

PRUNERS: dict[str, Callable[[PrunerSpec], optuna.pruners.BasePruner]] = {
    "none": lambda p: optuna.pruners.NopPruner(),
    "median": lambda p: optuna.pruners.MedianPruner(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
    ),
    "percentile": lambda p: optuna.pruners.PercentilePruner(
        p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
    ),
    "hyperband": lambda p: optuna.pruners.HyperbandPruner(),
}


def fingerprint(spec: SweepSpec, trial_overrides: tuple[str, ...]) -> str:
    """What must not change between workers/restarts of one study: space, objectives, fixed config."""
    keyed = {
        "sampler": spec.sampler,
        "objectives": [(o.metric, o.direction) for o in spec.objectives],
        "choices": {g: {o: [p.__dict__ for p in ps] for o, ps in opts.items()} for g, opts in spec.choices.items()},
        "params": [p.__dict__ for p in spec.params],
        "experiment": spec.experiment,
        "overrides": list(trial_overrides),
        "seed": spec.seed,
        "seeds": spec.seeds,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sampler_seed(spec: SweepSpec, existing_trials: int, worker_id: int) -> int:
    """Distinct per restart and per worker, so a resumed random sampler does not replay the
    params it drew before, and parallel workers (given distinct --worker-id) draw different ones."""
    return (spec.seed * 1_000_003 + existing_trials * 7_919 + worker_id * 104_729) % (2**31)


def open_study(
    spec: SweepSpec,
    storage: optuna.storages.RDBStorage,
    name: str,
    trial_overrides: tuple[str, ...],
    worker_id: int = 0,
    wait_s: float = 120.0,
    *,
    queue_budget: bool = False,
) -> tuple[optuna.Study, bool]:
    """Create the study (and its grid queue, or with `queue_budget` its trial budget as queued
    empty trials) or join it; returns (study, created_here)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    pruner = PRUNERS[spec.pruner.name](spec.pruner)
    directions = spec.directions
    fp = fingerprint(spec, trial_overrides)
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, pruner=pruner,
            sampler=SAMPLERS[spec.sampler](spec, sampler_seed(spec, 0, worker_id)),
        )  # fmt: skip
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
        sampler = SAMPLERS[spec.sampler](spec, sampler_seed(spec, existing, worker_id))
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if created:
        study.set_metric_names([o.metric for o in spec.objectives])  # optuna-dashboard shows "rsum"
        study.set_user_attr(SPEC_ATTR, json.loads(json.dumps(spec.to_dict(), default=str)))
        study.set_user_attr(FINGERPRINT_ATTR, fp)
        if spec.sampler == "grid":
            enqueue_grid(study, spec)
        elif queue_budget:
            enqueue_budget(study, spec)
        return study, True
    _check_same_sweep(study, spec, fp, name)
    if spec.sampler == "grid":
        _wait_for_grid(study, spec, wait_s)
    elif queue_budget:
        _wait_for_budget(study, spec, wait_s)
    return study, False


def _counted(t: optuna.trial.FrozenTrial) -> bool:
    """A trial that holds a unit of budget: all but the FAILs a dead worker left (re-queued)."""
    return t.state != optuna.trial.TrialState.FAIL or "error" in t.user_attrs


def enqueue_budget(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue one empty trial per unit of `n_trials` that no trial holds yet; mark the study."""
    missing = int(spec.n_trials or 0) - sum(_counted(t) for t in study.get_trials(deepcopy=False))
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, skip_if_exists=False)
    study.set_user_attr(QUEUED_ATTR, int(spec.n_trials or 0))
    return max(0, missing)


def _wait_for_budget(study: optuna.Study, spec: SweepSpec, wait_s: float) -> None:
    """Like _wait_for_grid. A study created before queued budgets existed (finished trials, no
    mark) has its remaining budget queued at once (resume it with one worker first)."""
    deadline = time.monotonic() + wait_s
    while QUEUED_ATTR not in study.user_attrs:
        finished = any(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if finished or time.monotonic() > deadline:
            enqueue_budget(study, spec)
            return
        time.sleep(0.2)


def enqueue_grid(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue the grid points (capped at n_trials) that have no trial yet; mark the study done."""
    points = grid_points(spec)[: spec.n_trials or None]
    present = {t.user_attrs.get("grid_key") for t in study.get_trials(deepcopy=False)}
    for point in points:
        key = point_key(point)
        if key not in present:
            study.enqueue_trial(point, user_attrs={"grid_key": key}, skip_if_exists=False)
    study.set_user_attr(GRID_ATTR, len(points))
    return len(points)


def _wait_for_grid(study: optuna.Study, spec: SweepSpec, wait_s: float) -> None:
    """A joining worker waits for the creator to finish enqueuing; if the creator died before
    marking the study, it completes the queue itself (only points without any trial are added)."""
    deadline = time.monotonic() + wait_s
    while GRID_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            enqueue_grid(study, spec)
            return
        time.sleep(0.5)


def _check_same_sweep(study: optuna.Study, spec: SweepSpec, fp: str, name: str) -> None:
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise ConfigError(
            f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, this sweep "
            f"{spec.directions}; use another --study name"
        )
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is not None and stored != fp:
        raise ConfigError(
            f"study {name!r} was created by a different sweep (search space, objectives, seed or fixed "
            "overrides differ); resume it with the same command, or pick a new --study name"
        )


def stored_spec(study: optuna.Study) -> dict[str, Any]:
    spec = study.user_attrs.get(SPEC_ATTR)
    if spec is None:
        raise ConfigError(f"study {study.study_name!r} was not created by `finealign sweep` (no {SPEC_ATTR})")
    return spec

"""Run (or resume) a protocol: tune every method on validation, retrain its best config with the
shared seeds, test once.

Storage: the tuning trials live in one Optuna RDB (SQLite by default, `runs/bench/STUDY.db`), one
study per method (`STUDY-METHOD`); each final run is a directory `OUT/final/METHOD/seed_S` whose
results.json marks it done. Stopping at any point and running the same command again continues
where it stopped: finished trials and runs are never repeated.

Test data is never read while tuning: tuning trials run with `eval.split=val`, and the split the
final runs evaluate is only requested after a method's tuning study is complete.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from finealign.engine.provenance import provenance
from finealign.errors import ConfigError
from finealign.protocol.spec import MethodSpec, ProtocolSpec
from finealign.sweeps.loader import merge_overrides
from finealign.sweeps.objective import load_objective
from finealign.sweeps.runner import ERROR_ATTR, Objective, SweepWorker
from finealign.sweeps.space import to_overrides
from finealign.sweeps.spec import ObjectiveSpec, SweepSpec
from finealign.sweeps.storage import open_storage, with_available_driver
from finealign.sweeps.study import open_study

DEFAULT_ROOT = Path("runs") / "bench"
SPEC_FILE = "protocol.json"
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


@dataclass
class FinalRun:
    seed: int
    directory: Path
    metrics: dict[str, Any] | None  # None: failed or not run yet
    error: str | None = None


@dataclass
class MethodOutcome:
    name: str
    tune: TuneOutcome
    finals: list[FinalRun]

    @property
    def failure(self) -> str | None:
        """Why this method has no test numbers, or None."""
        if self.tune.best_params is None:
            first = self.tune.errors[0] if self.tune.errors else "no trial finished"
            return f"all {self.tune.failed} tuning trials failed: {first}" if self.tune.failed else first
        if not any(f.metrics for f in self.finals):
            errors = [f.error for f in self.finals if f.error]
            return f"every final run failed: {errors[0]}" if errors else "final runs not run yet"
        return None


def default_storage(study: str, root: Path = DEFAULT_ROOT) -> str:
    return f"sqlite:///{(root / f'{study}.db').resolve()}"


def tune_sweep_spec(spec: ProtocolSpec, method: MethodSpec) -> SweepSpec:
    """One method's tuning as a sweep: shared params first (so a seeded sampler proposes the same
    shared values to every method in its random start-up), then the method's own."""
    return SweepSpec(
        study=f"{spec.study}-{method.name}", sampler=spec.tune.sampler,
        objectives=(ObjectiveSpec(spec.tune.metric, "maximize"),), choices={},
        params=(*spec.shared, *method.params), overrides=(), experiment=spec.experiment, objective=spec.objective,
        n_trials=spec.tune.n_trials, seed=spec.tune.seed, seeds="paired", heartbeat_s=spec.heartbeat_s,
        plot_x="score_latency_ms", plot_y=spec.tune.metric,
    )  # fmt: skip


def tune_overrides(spec: ProtocolSpec, method: MethodSpec, extra: Iterable[str] = ()) -> tuple[str, ...]:
    return merge_overrides([*spec.overrides, *extra, *method.overrides, *spec.tune.overrides], TUNE_FIXED)


def final_overrides(
    spec: ProtocolSpec,
    method: MethodSpec,
    best: dict[str, Any],
    seed: int,
    directory: Path,
    extra: Iterable[str] = (),
    *,
    with_costs: bool = False,
) -> list[str]:
    base = [*spec.overrides, *extra, *method.overrides, *to_overrides(best), *spec.test_overrides]
    if with_costs:
        base += list(spec.cost_overrides)
    return list(merge_overrides(base, [*FINAL_FIXED, f"seed={seed}", f"output_dir={directory}"]))


def _check_same_protocol(out: Path, spec: ProtocolSpec, extra: tuple[str, ...]) -> None:
    """A resumed protocol must be the same protocol: refuse to mix two into one directory."""
    path = out / SPEC_FILE
    record = {"spec": json.loads(json.dumps(spec.to_dict(), default=str)), "overrides": list(extra)}
    if path.is_file():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in record} != record:
            raise ConfigError(
                f"{out} holds protocol {stored['spec'].get('study')!r} with another spec or overrides; resume it "
                "with the same command, or pick another --out / study name"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "provenance": provenance()}, indent=2, default=str))


def tune_method(
    spec: ProtocolSpec,
    method: MethodSpec,
    storage_url: str,
    out: Path,
    objective: Objective,
    extra: tuple[str, ...] = (),
    progress: bool = True,
) -> TuneOutcome:
    sweep = tune_sweep_spec(spec, method)
    overrides = tune_overrides(spec, method, extra)
    rdb = open_storage(storage_url, sweep.heartbeat_s)
    study, _ = open_study(sweep, rdb, sweep.study, overrides)
    SweepWorker(study, rdb, sweep, objective, overrides, output_root=str(out / "tune" / method.name / "trials"),
                progress=progress).run()  # fmt: skip
    return tune_outcome(study)


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


def read_final(directory: Path) -> dict[str, Any] | None:
    path = directory / "results.json"
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text())["metrics"])


def run_finals(
    spec: ProtocolSpec,
    method: MethodSpec,
    best: dict[str, Any],
    out: Path,
    objective: Objective,
    extra: tuple[str, ...] = (),
) -> list[FinalRun]:
    runs = []
    for i, seed in enumerate(spec.seeds):
        directory = out / "final" / method.name / f"seed_{seed}"
        metrics = read_final(directory)
        error = None
        if metrics is None:
            overrides = final_overrides(spec, method, best, seed, directory, extra, with_costs=i == 0)
            try:
                objective(overrides, lambda epoch, val: None)
                metrics = read_final(directory)
                if metrics is None:
                    error = f"the run finished without writing {directory / 'results.json'}"
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # one failed seed must not end the protocol
                error = f"{type(exc).__name__}: {exc}"[:2000]
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "error.txt").write_text(traceback.format_exc())
        runs.append(FinalRun(seed=seed, directory=directory, metrics=metrics, error=error))
    return runs


def stored_outcomes(spec: ProtocolSpec, storage_url: str, out: Path) -> list[MethodOutcome]:
    """Every method's state as storage and run directories hold it (for reports and resumes)."""
    outcomes = []
    names = {s.study_name for s in optuna.get_all_study_summaries(storage_url)} if _exists(storage_url) else set()
    for method in spec.methods:
        study_name = f"{spec.study}-{method.name}"
        if study_name in names:
            tune = tune_outcome(optuna.load_study(study_name=study_name, storage=storage_url))
        else:
            tune = TuneOutcome(errors=["not tuned yet"])
        finals = []
        for seed in spec.seeds:
            directory = out / "final" / method.name / f"seed_{seed}"
            error_file = directory / "error.txt"
            metrics = read_final(directory)
            error = None
            if metrics is None and error_file.is_file():
                error = error_file.read_text().strip().splitlines()[-1]
            finals.append(FinalRun(seed=seed, directory=directory, metrics=metrics, error=error))
        outcomes.append(MethodOutcome(name=method.name, tune=tune, finals=finals))
    return outcomes


def _exists(url: str) -> bool:
    return not url.startswith("sqlite:///") or Path(url[len("sqlite:///") :]).is_file()


def run_protocol(
    spec: ProtocolSpec,
    extra: Iterable[str] = (),
    *,
    storage: str | None = None,
    out_dir: Path | None = None,
    objective: Objective | None = None,
    methods: Iterable[str] | None = None,
    progress: bool = True,
) -> list[MethodOutcome]:
    """Tune, retrain with the shared seeds, and test each method in turn (a subset with `methods`);
    resumable. `extra`: command-line overrides added to every run of every method."""
    extra = tuple(extra)
    out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / spec.study
    url = with_available_driver(storage or default_storage(spec.study, out.parent))
    _check_same_protocol(out, spec, extra)
    chosen = [spec.method(name) for name in methods] if methods else list(spec.methods)
    objective = objective or load_objective(spec.objective, spec.experiment)
    for method in chosen:
        tune = tune_method(spec, method, url, out, objective, extra, progress)
        if tune.best_params is None:
            continue  # the report keeps the method with its reason
        run_finals(spec, method, tune.best_params, out, objective, extra)
    return stored_outcomes(spec, url, out)

"""Run (or resume) a protocol: tune every method on validation, retrain its best config with the
shared seeds, test once; then the same for every factor level (see protocol/cells.py).

Storage: the tuning trials live in one Optuna RDB (SQLite by default, `runs/bench/STUDY.db`), one
study per method (`STUDY-METHOD`) and per retuned level; each final run is a directory
`OUT/final/METHOD[/FACTOR=LEVEL]/seed_S` whose results.json marks it done. Stopping at any point and running the same command again continues
where it stopped: finished trials and runs are never repeated.

Test data is never read while tuning: tuning trials run with `eval.split=val`, and the split the
final runs evaluate is only requested after a method's tuning study is complete.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from finealign.engine.provenance import provenance
from finealign.errors import ConfigError
from finealign.protocol.cells import Cell, cells, level_overrides, study_name, tuned_away, tuning_cell
from finealign.protocol.spec import MethodSpec, ProtocolSpec
from finealign.sweeps.loader import merge_overrides
from finealign.sweeps.objective import load_objective
from finealign.sweeps.runner import ERROR_ATTR, Objective, SweepWorker
from finealign.sweeps.space import to_overrides
from finealign.sweeps.spec import ObjectiveSpec, SweepSpec
from finealign.sweeps.storage import open_storage, with_available_driver
from finealign.sweeps.study import open_study, sampler_seed

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
    """A method's state at its base (`cell` None or a base cell) or at one factor level."""

    name: str
    tune: TuneOutcome
    finals: list[FinalRun]
    cell: Cell | None = None

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


def write_atomic(path: Path, text: str) -> None:
    """Readers (another worker, a report) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def spec_record(spec: ProtocolSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict(), default=str))


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [where.lstrip(".") or "(spec)"]


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


def _growth_problems(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a resumed protocol changed that earlier work depends on. A protocol may grow — new
    methods, new factors, new levels at the end of a factor, more methods running a factor — and
    keeps what it has done; anything else that differs is listed (dotted paths)."""
    fixed = lambda spec: {k: v for k, v in spec.items() if k not in ("methods", "factors")}  # noqa: E731
    problems = _differences(fixed(stored), fixed(new), "spec")
    new_methods = _by_name(new["methods"])
    for name, method in _by_name(stored["methods"]).items():
        if name not in new_methods:
            problems.append(f"spec.methods.{name} (removed)")
        else:
            problems += _differences(method, new_methods[name], f"spec.methods.{name}")
    new_factors = _by_name(new.get("factors") or [])
    for name, factor in _by_name(stored.get("factors") or []).items():
        grown = new_factors.get(name)
        if grown is None:
            problems.append(f"spec.factors.{name} (removed)")
            continue
        where = f"spec.factors.{name}"
        problems += _differences(factor["retune"], grown["retune"], f"{where}.retune")
        if grown["levels"][: len(factor["levels"])] != factor["levels"]:
            problems.append(f"{where}.levels (only new levels at the end may be added)")
        if factor["methods"] and not set(factor["methods"]) <= set(grown["methods"] or new_methods):
            problems.append(f"{where}.methods (methods may be added, not removed)")
    return problems


def _check_same_protocol(out: Path, spec: ProtocolSpec, extra: tuple[str, ...]) -> None:
    """A resumed protocol must be the same protocol, or the same one grown (`_growth_problems`):
    refuse to mix two into one directory. The stored spec is read back with today's defaults (a
    protocol.json written before a key existed resumes when the key keeps its default). A grown
    spec replaces the stored one; the record keeps when and from which commit each version started."""
    path = out / SPEC_FILE
    record = {"spec": spec_record(spec), "overrides": list(extra)}
    if path.is_file():
        stored = json.loads(path.read_text())
        now = spec_record(ProtocolSpec.from_record(stored["spec"]))
        differ = _differences(stored.get("overrides"), record["overrides"], "overrides")
        differ += _growth_problems(now, record["spec"])
        if differ:
            raise ConfigError(
                f"{out} holds protocol {stored['spec'].get('study')!r} with another spec or overrides (differs in "
                f"{', '.join(differ[:6])}); resume it with the same command (methods, factors and new levels may "
                "be added), or pick another --out / study name"
            )
        if now != record["spec"]:
            versions = [*stored.get("earlier", []), {"spec": stored["spec"], "provenance": stored.get("provenance")}]
            grown = {**record, "provenance": provenance(), "earlier": versions}
            write_atomic(path, json.dumps(grown, indent=2, default=str))
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**record, "provenance": provenance()}, indent=2, default=str))


def tune_method(
    spec: ProtocolSpec,
    method: MethodSpec,
    storage: str | RDBStorage,
    out: Path,
    objective: Objective,
    extra: tuple[str, ...] = (),
    progress: bool = True,
    cell: Cell | None = None,
) -> TuneOutcome:
    """Tune a method at its base (or at a retuned level `cell`) until its budget is used up."""
    cell = cell or Cell(method.name)
    sweep = tune_sweep_spec(spec, method, cell)
    overrides = tune_overrides(spec, method, extra, level_overrides(spec, cell))
    rdb = storage if isinstance(storage, RDBStorage) else open_storage(storage, sweep.heartbeat_s)
    study, _ = open_study(sweep, rdb, sweep.study, overrides)
    study.sampler = tune_sampler(spec, sampler_seed(sweep, len(study.get_trials(deepcopy=False)), 0))
    SweepWorker(study, rdb, sweep, objective, overrides, output_root=str(out / "tune" / cell.path / "trials"),
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
    cell: Cell | None = None,
) -> list[FinalRun]:
    cell = cell or Cell(method.name)
    level = level_overrides(spec, cell)
    runs = []
    for i, seed in enumerate(spec.seeds):
        directory = cell.final_dir(out, seed)
        metrics = read_final(directory)
        error = None
        if metrics is None:
            overrides = final_overrides(spec, method, best, seed, directory, extra, with_costs=i == 0, level=level)
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


def stored_outcomes(spec: ProtocolSpec, storage: str | RDBStorage, out: Path) -> list[MethodOutcome]:
    """Every method's state at its base as storage and run directories hold it (the main table)."""
    return [o for o in stored_cell_outcomes(spec, storage, out) if o.cell is None or o.cell.is_base]


def existing_storage(storage: str | RDBStorage) -> RDBStorage | None:
    """The storage opened once (opening checks the schema: ~0.2 s), or None for an SQLite file
    that does not exist yet (a report must not create one)."""
    if isinstance(storage, RDBStorage):
        return storage
    url = with_available_driver(storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return None
    return open_storage(url, heartbeat_s=60)


def stored_cell_outcomes(spec: ProtocolSpec, storage: str | RDBStorage, out: Path) -> list[MethodOutcome]:
    """Every cell's state (bases first, then factor levels), from storage and run directories."""
    rdb = existing_storage(storage)
    names = {s.study_name for s in optuna.get_all_study_summaries(rdb)} if rdb is not None else set()
    tunes: dict[Cell, TuneOutcome] = {}
    outcomes = []
    for cell in cells(spec):
        tuner = tuning_cell(spec, cell)
        if tuner not in tunes:
            name = study_name(spec, tuner)
            tunes[tuner] = (
                tune_outcome(optuna.load_study(study_name=name, storage=rdb))
                if rdb is not None and name in names
                else TuneOutcome(errors=["not tuned yet"])
            )
        finals = [_stored_final(cell.final_dir(out, seed), seed) for seed in spec.seeds]
        outcomes.append(MethodOutcome(name=cell.method, tune=tunes[tuner], finals=finals, cell=cell))
    return outcomes


def _stored_final(directory: Path, seed: int) -> FinalRun:
    error_file = directory / "error.txt"
    metrics = read_final(directory)
    error = None
    if metrics is None and error_file.is_file():
        error = error_file.read_text().strip().splitlines()[-1]
    return FinalRun(seed=seed, directory=directory, metrics=metrics, error=error)


def run_protocol(
    spec: ProtocolSpec,
    extra: Iterable[str] = (),
    *,
    storage: str | None = None,
    out_dir: Path | None = None,
    objective: Objective | None = None,
    methods: Iterable[str] | None = None,
    factors: Iterable[str] | None = None,
    progress: bool = True,
) -> list[MethodOutcome]:
    """Tune, retrain with the shared seeds, and test each method in turn, then each factor level
    (a subset with `methods`; `factors`: None = all, [] = the bases only); resumable. `extra`:
    command-line overrides added to every run of every method. Returns the bases' outcomes."""
    extra = tuple(extra)
    out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / spec.study
    url = with_available_driver(storage or default_storage(spec.study, out.parent))
    chosen = [spec.method(name).name for name in methods] if methods else None
    factors = None if factors is None else [spec.factor(name).name for name in factors]
    _check_same_protocol(out, spec, extra)
    objective = objective or load_objective(spec.objective, spec.experiment)
    rdb = open_storage(url, spec.heartbeat_s)
    tunes: dict[Cell, TuneOutcome] = {}
    for cell in cells(spec, chosen, factors):
        method, tuner = spec.method(cell.method), tuning_cell(spec, cell)
        if tuner not in tunes:
            tunes[tuner] = tune_method(spec, method, rdb, out, objective, extra, progress, tuner)
        best = tunes[tuner].best_params
        if best is None:
            continue  # the report keeps the cell with its reason
        run_finals(spec, method, best, out, objective, extra, cell)
    return stored_outcomes(spec, rdb, out)

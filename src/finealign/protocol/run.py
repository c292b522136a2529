"""Run (or resume, or join) a protocol: tune every method on validation, retrain its best config
with the shared seeds, test once; then the same for every factor level (see protocol/cells.py).

Storage: one Optuna RDB (SQLite by default, `runs/bench/STUDY.db`; PostgreSQL to share across
machines) holds the tuning trials, one study per method (`STUDY-METHOD`) and per retuned level,
and the final runs as the queued trials of `STUDY-finals`, which workers claim (protocol/finals.py);
each final run writes `OUT/final/METHOD[/FACTOR-LEVEL]/seed_S`, whose results.json marks it done.
Stopping at any point and running the same command again continues where it stopped: finished
trials and runs are never repeated. Several `finealign bench` processes on one storage and one
protocol folder split the work (protocol/worker.py).

Every run composes its config from the config tree as it was when the protocol started
(`OUT/config-snapshot/`, sweeps/snapshot.py): edits to configs/ during a long protocol change
nothing in it, and resuming with a changed tree is refused unless the changes are adopted.

Test data is never read while tuning: tuning trials run with `eval.split=val`, and the split the
final runs evaluate is only requested after a method's tuning study is finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from finealign.engine.provenance import provenance
from finealign.errors import ConfigError
from finealign.protocol.cells import Cell, cells, study_name, tuning_cell
from finealign.protocol.finals import FinalsQueue, open_finals, read_final
from finealign.protocol.growth import differences, growth_problems
from finealign.protocol.loader import check_tune_metric
from finealign.protocol.recipe import (  # noqa: F401  (re-exported: the protocol's public names)
    FINAL_FIXED,
    TUNE_FIXED,
    TuneOutcome,
    final_overrides,
    trial_sampler_seed,
    tune_outcome,
    tune_overrides,
    tune_sampler,
    tune_sweep_spec,
)
from finealign.protocol.spec import ProtocolSpec
from finealign.protocol.worker import BenchWorker, WorkerReport
from finealign.sweeps.objective import load_objective
from finealign.sweeps.runner import Objective
from finealign.sweeps.snapshot import composing_from, freeze_config_tree
from finealign.sweeps.storage import open_storage, with_available_driver

DEFAULT_ROOT = Path("runs") / "bench"
SPEC_FILE = "protocol.json"


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


def write_atomic(path: Path, text: str) -> None:
    """Readers (another worker, a report) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def spec_record(spec: ProtocolSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict(), default=str))


def _check_same_protocol(out: Path, spec: ProtocolSpec, extra: tuple[str, ...]) -> None:
    """A resumed protocol must be the same protocol, or the same one grown (`growth.growth_problems`):
    refuse to mix two into one directory. The stored spec is read back with today's defaults (a
    protocol.json written before a key existed resumes when the key keeps its default). A grown
    spec replaces the stored one; the record keeps when and from which commit each version started."""
    path = out / SPEC_FILE
    new = spec_record(spec)
    record: dict[str, Any] = {"spec": new, "overrides": list(extra)}
    if path.is_file():
        stored = json.loads(path.read_text())
        now = spec_record(ProtocolSpec.from_record(stored["spec"]))
        differ = differences(stored.get("overrides"), record["overrides"], "overrides")
        differ += growth_problems(now, new)
        if differ:
            raise ConfigError(
                f"{out} holds protocol {stored['spec'].get('study')!r} with another spec or overrides (differs in "
                f"{', '.join(differ[:6])}); resume it with the same command (methods, factors and new levels may "
                "be added), or pick another --out / study name"
            )
        if now != new:
            versions = [*stored.get("earlier", []), {"spec": stored["spec"], "provenance": stored.get("provenance")}]
            grown = {**record, "provenance": provenance(), "earlier": versions}
            write_atomic(path, json.dumps(grown, indent=2, default=str))
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**record, "provenance": provenance()}, indent=2, default=str))


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
    wait: bool = True,
    poll_s: float | None = None,
    adopt_config_changes: bool = False,
) -> list[MethodOutcome]:
    """Work on the protocol until nothing is left: tune, retrain with the shared seeds and test
    each method, then each factor level (a subset with `methods`; `factors`: None = all, [] =
    the bases only); resumable, and any number of calls (processes, machines) may share one
    storage and protocol folder. `extra`: command-line overrides added to every run of every
    method. `wait=False`: return when the rest is held by other workers instead of waiting for
    them. `adopt_config_changes`: resume although the config tree changed since the protocol
    started (sweeps/snapshot.py). Returns the bases' outcomes."""
    return run_worker(spec, extra, storage=storage, out_dir=out_dir, objective=objective, methods=methods,
                      factors=factors, progress=progress, wait=wait, poll_s=poll_s,
                      adopt_config_changes=adopt_config_changes)[0]  # fmt: skip


def run_worker(
    spec: ProtocolSpec,
    extra: Iterable[str] = (),
    *,
    storage: str | None = None,
    out_dir: Path | None = None,
    objective: Objective | None = None,
    methods: Iterable[str] | None = None,
    factors: Iterable[str] | None = None,
    progress: bool = True,
    wait: bool = True,
    poll_s: float | None = None,
    adopt_config_changes: bool = False,
) -> tuple[list[MethodOutcome], WorkerReport]:
    """run_protocol, also returning what this worker did."""
    extra = tuple(extra)
    if objective is None:
        check_tune_metric(spec)  # before anything is created or run
    out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / spec.study
    url = with_available_driver(storage or default_storage(spec.study, out.parent))
    chosen_methods = [spec.method(name).name for name in methods] if methods else None
    chosen_factors = None if factors is None else [spec.factor(name).name for name in factors]
    _check_same_protocol(out, spec, extra)
    snapshot = freeze_config_tree(out, adopt_changes=adopt_config_changes)
    objective = objective or load_objective(spec.objective, spec.experiment)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    rdb = open_storage(url, spec.heartbeat_s)
    record = {"spec": spec_record(spec), "overrides": list(extra)}
    finals = FinalsQueue(open_finals(spec, rdb, _fingerprint(spec, extra), record), rdb, spec, out, spec.heartbeat_s)
    worker = BenchWorker(
        spec, rdb, out, objective, finals, cells(spec, chosen_methods, chosen_factors), extra=extra,
        sampler_for_trial=lambda number: tune_sampler(spec, trial_sampler_seed(spec, number)),
        progress=progress, poll_s=poll_s if poll_s is not None else 1.0,
    )  # fmt: skip
    with composing_from(snapshot):
        report = worker.run(wait=wait)
    return stored_outcomes(spec, rdb, out), report


def _fingerprint(spec: ProtocolSpec, extra: tuple[str, ...]) -> str:
    record = json.dumps({"spec": spec_record(spec), "overrides": list(extra)}, sort_keys=True)
    return hashlib.sha256(record.encode()).hexdigest()[:16]

"""A protocol's final runs as an Optuna study, so that workers sharing the storage claim them.

Study `STUDY-finals` holds one queued trial per final run (method, factor level, seed) of the whole
protocol, enqueued once by the worker that creates the study. A worker claims a run by moving its
trial WAITING → RUNNING, which the storage lets exactly one worker do; it records its host:pid
(user attribute `worker`), beats the heartbeat while the run trains, and tells COMPLETE (value:
the test metric) when results.json is written. A worker that dies (its process on this host is
gone, or it stopped beating for 2 × heartbeat_s) has its trial put back in the queue as it was
(storage.recover_stale_trials), and so has one stopped by Ctrl-C. Its run directory has no
results.json then (a results.json that does not parse is no result), or, if it died after writing
one, the retry adopts it without training again: a run is never counted twice.

A run that fails (raises) is FAIL with its `error`, leaves error.txt, and is queued again for the
*next* `finealign bench`: the retry carries `not_before` = the failure time, and only workers
started after it claim it (workers of the same session do not retry it in a loop).

Results land in one protocol folder that every worker can write (a shared filesystem); the
storage holds who ran what, the run folders hold the numbers.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from finealign.errors import ConfigError
from finealign.protocol.cells import Cell, cells
from finealign.protocol.growth import differences, growth_problems
from finealign.protocol.spec import ProtocolSpec
from finealign.sweeps.runner import ERROR_ATTR, WORKER_ATTR, Objective
from finealign.sweeps.storage import Heartbeat, claim_trial, recover_stale_trials, release_trial, still_ours

FINAL_ATTR = "final"  # {"method", "factor", "level", "seed"}
RUN_ATTR = "run"  # the run's folder under the protocol folder (what a person reads in the dashboard)
NOT_BEFORE_ATTR = "not_before"  # a retry after a failure: only for workers started later
QUEUED_ATTR = "finals_queued"
FINGERPRINT_ATTR = "protocol_fingerprint"
RECORD_ATTR = "protocol_record"  # the spec + overrides the fingerprint hashes (JSON), to tell growth from change


def finals_study_name(spec: ProtocolSpec) -> str:
    return f"{spec.study}-finals"


@dataclass(frozen=True)
class FinalKey:
    cell: Cell
    seed: int

    @property
    def run(self) -> str:
        return str(Path("final") / self.cell.path / f"seed_{self.seed}")

    def attrs(self) -> dict[str, Any]:
        c = self.cell
        return {FINAL_ATTR: {"method": c.method, "factor": c.factor, "level": c.level, "seed": self.seed},
                RUN_ATTR: self.run}  # fmt: skip

    @classmethod
    def of(cls, trial: FrozenTrial) -> FinalKey:
        f = trial.user_attrs[FINAL_ATTR]
        return cls(Cell(f["method"], f["factor"], f["level"]), int(f["seed"]))


def all_finals(spec: ProtocolSpec) -> list[FinalKey]:
    return [FinalKey(cell, seed) for cell in cells(spec) for seed in spec.seeds]


def open_finals(
    spec: ProtocolSpec, storage: RDBStorage, fingerprint: str, record: dict[str, Any], wait_s: float = 120.0
) -> optuna.Study:
    """Create the finals study with every final run queued, or join it (waiting for the creator to
    finish queueing; if it died first, queue the runs that have no trial). A study of the same
    protocol grown (growth.growth_problems) takes the new spec and queues the new runs."""
    name = finals_study_name(spec)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get(FINGERPRINT_ATTR)
        if stored is not None and stored != fingerprint:
            _grow(study, name, record, fingerprint, spec)
            return study
        deadline = time.monotonic() + wait_s
        while QUEUED_ATTR not in study.user_attrs:
            if time.monotonic() > deadline:
                _enqueue(study, spec)
                break
            time.sleep(0.2)
        return study
    study.set_metric_names([f"test_{spec.tune.metric}"])
    study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    study.set_user_attr(RECORD_ATTR, json.dumps(record, sort_keys=True, default=str))
    _enqueue(study, spec)
    return study


def _grow(study: optuna.Study, name: str, record: dict[str, Any], fingerprint: str, spec: ProtocolSpec) -> None:
    """Adopt a grown spec (queueing its new runs), or refuse another protocol's."""
    raw = study.user_attrs.get(RECORD_ATTR)
    stored = json.loads(raw) if raw else None
    problems = ["(no record of its spec)"] if stored is None else (
        differences(stored["overrides"], record["overrides"], "overrides")
        + growth_problems(stored["spec"], record["spec"]))  # fmt: skip
    if problems:
        raise ConfigError(
            f"storage holds a finals study {name!r} of another protocol spec (differs in {', '.join(problems[:6])}); "
            "use another study name or storage"
        )
    study.set_user_attr(RECORD_ATTR, json.dumps(record, sort_keys=True, default=str))
    study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    _enqueue(study, spec)  # runs already queued, running or done are kept


def _enqueue(study: optuna.Study, spec: ProtocolSpec) -> None:
    present = {FinalKey.of(t) for t in study.get_trials(deepcopy=False) if FINAL_ATTR in t.user_attrs}
    for key in all_finals(spec):
        if key not in present:
            study.enqueue_trial({}, user_attrs=key.attrs(), skip_if_exists=False)
    study.set_user_attr(QUEUED_ATTR, True)


@dataclass
class FinalsState:
    """One snapshot of the finals study, grouped by run."""

    waiting: dict[FinalKey, list[FrozenTrial]]
    running: dict[FinalKey, list[FrozenTrial]]
    complete: set[FinalKey]

    def holders(self, keys: Iterable[FinalKey]) -> list[str]:
        return [f"{k.run} ({t.user_attrs.get(WORKER_ATTR, '?')})" for k in keys for t in self.running.get(k, [])]


class FinalsQueue:
    """This worker's view of the finals study: claim, run, record."""

    def __init__(self, study: optuna.Study, storage: RDBStorage, spec: ProtocolSpec, out: Path, heartbeat_s: int):
        self.study, self.storage, self.spec, self.out, self.heartbeat_s = study, storage, spec, out, heartbeat_s
        self.started = time.time()  # retries of runs that failed before this worker started are ours
        self._study_id = storage.get_study_id_from_name(study.study_name)

    def state(self) -> FinalsState:
        recover_stale_trials(self.study, self.storage)  # a dead worker's run goes back into the queue
        waiting: dict[FinalKey, list[FrozenTrial]] = {}
        running: dict[FinalKey, list[FrozenTrial]] = {}
        complete: set[FinalKey] = set()
        for t in self.study.get_trials(deepcopy=False):
            if FINAL_ATTR not in t.user_attrs:
                continue
            key = FinalKey.of(t)
            if t.state == TrialState.COMPLETE:
                complete.add(key)
            elif t.state == TrialState.RUNNING:
                running.setdefault(key, []).append(t)
            elif t.state == TrialState.WAITING and float(t.user_attrs.get(NOT_BEFORE_ATTR, 0.0)) < self.started:
                waiting.setdefault(key, []).append(t)
        return FinalsState(waiting, running, complete)

    def claim(self, state: FinalsState, keys: Iterable[FinalKey]) -> tuple[FinalKey, int] | None:
        """(run, trial id) of the first queued run among `keys` this worker got, or None."""
        for key in keys:
            if key in state.complete:
                continue
            for frozen in state.waiting.get(key, []):
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, frozen.number)
                try:
                    if claim_trial(self.storage, trial_id):
                        return key, trial_id
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
        return None

    def run(
        self, key: FinalKey, trial_id: int, overrides: Callable[[Path], list[str]], objective: Objective
    ) -> dict[str, Any] | None:
        """Run a claimed final (or adopt the results.json a killed worker left); record it."""
        directory = key.cell.final_dir(self.out, key.seed)
        claimed = self.storage.get_trial(trial_id)
        number = claimed.number
        with Heartbeat(self.storage, trial_id, self.heartbeat_s):
            try:
                metrics = read_final(directory)
                self.storage.set_trial_user_attr(trial_id, "adopted", metrics is not None)
                if metrics is None:
                    args = overrides(directory)
                    self.storage.set_trial_user_attr(trial_id, "overrides", args)
                    objective(args, lambda epoch, val: None)
                    metrics = read_final(directory)
                    if metrics is None:
                        raise RuntimeError(f"the run finished without writing {directory / 'results.json'}")
            except (KeyboardInterrupt, SystemExit):
                release_trial(self.storage, trial_id)  # interrupted, not broken: queue it again now
                raise
            except Exception as exc:  # one failed run must not end the protocol
                error = f"{type(exc).__name__}: {exc}"[:2000]
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "error.txt").write_text(traceback.format_exc())
                self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, error)
                self.study.tell(number, state=TrialState.FAIL)
                # the next `finealign bench` tries it again, not this session's workers
                self.study.enqueue_trial({}, user_attrs={**key.attrs(), NOT_BEFORE_ATTR: time.time()})
                return None
        value = metrics.get(self.spec.tune.metric)
        try:
            if not still_ours(self.storage, trial_id, claimed.datetime_start):
                raise optuna.exceptions.UpdateFinishedTrialError("put back in the queue meanwhile")
            self.storage.set_trial_user_attr(trial_id, "metrics", {k: v for k, v in metrics.items() if _plain(v)})
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                # a run that wrote non-finite numbers is done (its numbers are what they are)
                self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, f"test {self.spec.tune.metric} is {value!r}")
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our heartbeats came late and another worker put the trial back in the queue; its
            # retry finds this results.json and adopts it (nothing is counted twice).
            return metrics
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.study.tell(number, float(value), skip_if_finished=True)
        else:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        return metrics


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def read_final(directory: Path) -> dict[str, Any] | None:
    """A final run's metrics, or None when it has none: no results.json, or one that does not
    parse or holds no metrics (cut short by a kill: never adopted, the run is redone)."""
    path = directory / "results.json"
    try:
        metrics = json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(metrics) if isinstance(metrics, dict) else None

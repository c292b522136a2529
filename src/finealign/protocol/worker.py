"""One `finealign bench` worker: it takes the next piece of work the shared storage has — a tuning
trial or a final run — until none is left, so that N workers on one storage split a protocol.

Order of preference (each worker walks it from the top after every piece of work): the cells in
protocol order (all bases, then factor levels); within a cell, a trial of its tuning study while
that study's budget lasts, then the cell's final runs once the study is finished (no trial left to
claim or running anywhere: the best params are final). While one worker runs the last trial of a
study, the others move on to the next cell's tuning, or to final runs that are ready.

- Tuning budgets are queued (sweeps/study.py `queue_budget`): each method's `n_trials` is spent
  once in total across workers. Each trial draws its params from a sampler seeded by the trial's
  number, so which worker claims it does not change what it draws (with `tune.sampler: random`,
  and during TPE's random start-up, tuning is the same for any number of workers).
- Final runs are claimed through the finals study (protocol/finals.py): one worker per run.
- A worker with nothing to claim while others still hold work waits (a dead worker's trial or run
  comes back after the heartbeat grace and must not be lost), printing once who holds what; with
  `wait=False` it says so and returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from finealign.engine.tracking import tracked_as
from finealign.protocol.cells import Cell, level_overrides, tuning_cell
from finealign.protocol.finals import FinalKey, FinalsQueue, FinalsState
from finealign.protocol.recipe import final_overrides, tune_outcome, tune_overrides, tune_sweep_spec
from finealign.protocol.spec import ProtocolSpec
from finealign.sweeps.runner import WORKER_ATTR, Objective, SweepWorker
from finealign.sweeps.study import open_study


@dataclass
class WorkerReport:
    """What this worker did, and what it left to others."""

    tuning_trials: int = 0
    finals: int = 0
    waited_s: float = 0.0
    held_by_others: list[str] = field(default_factory=list)  # non-empty: returned without waiting


class BenchWorker:
    def __init__(
        self,
        spec: ProtocolSpec,
        storage: RDBStorage,
        out: Path,
        objective: Objective,
        finals: FinalsQueue,
        chosen: list[Cell],
        *,
        extra: tuple[str, ...] = (),
        sampler_for_trial: Callable[[int], optuna.samplers.BaseSampler],
        progress: bool = True,
        poll_s: float = 1.0,
        log: Callable[[str], None] | None = None,
    ):
        """progress: a line per finished trial and run (lines saying what this worker waits for
        are printed either way)."""
        self.spec, self.storage, self.out, self.objective, self.finals = spec, storage, out, objective, finals
        self.chosen, self.extra, self.progress, self.poll_s = chosen, extra, progress, poll_s
        self.sampler_for_trial = sampler_for_trial
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._tuners: dict[Cell, SweepWorker] = {}
        self._tuned: dict[Cell, dict | None] = {}  # finished studies: best params (None: every trial failed)
        self.report = WorkerReport()

    # -- tuning -------------------------------------------------------------------------------
    def tuner(self, cell: Cell) -> SweepWorker:
        if cell not in self._tuners:
            method = self.spec.method(cell.method)
            sweep = tune_sweep_spec(self.spec, method, cell)
            overrides = tune_overrides(self.spec, method, self.extra, level_overrides(self.spec, cell))
            study, _ = open_study(sweep, self.storage, sweep.study, overrides, queue_budget=True)
            self._tuners[cell] = SweepWorker(
                study, self.storage, sweep, self.objective, overrides, progress=False,
                output_root=str(self.out / "tune" / cell.path / "trials"),
                sampler_for_trial=self.sampler_for_trial,
            )  # fmt: skip
        return self._tuners[cell]

    def _tune_step(self, cell: Cell, held: list[str]) -> bool | None:
        """Ran a trial: True; the study is still busy elsewhere: False (held gets who); finished: None."""
        if cell in self._tuned:
            return None
        tuner = self.tuner(cell)
        trial = tuner.poll()
        if trial is not None:
            with tracked_as(f"{tuner.study.study_name}/trial_{trial.number:04d}", self._tags(cell, "tune")):
                state = tuner.run_trial(trial)
            self.report.tuning_trials += 1
            self._progress(f"[bench] tuning {tuner.study.study_name} trial {trial.number}: {state.name.lower()}")
            return True
        if tuner.busy():
            running = tuner.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            held += [f"tuning {tuner.study.study_name} #{t.number} ({t.user_attrs.get(WORKER_ATTR, '?')})"
                     for t in running]  # fmt: skip
            return False
        self._tuned[cell] = tune_outcome(tuner.study).best_params
        return None

    # -- the loop -----------------------------------------------------------------------------
    def step(self, held: list[str]) -> bool:
        """Do one piece of work; False when there was none to claim (`held`: who holds the rest)."""
        state: FinalsState | None = None
        for cell in self.chosen:
            tuner = tuning_cell(self.spec, cell)
            ran = self._tune_step(tuner, held)
            if ran:
                return True
            if ran is False or self._tuned[tuner] is None:
                continue  # not tuned yet (final params unknown), or nothing tuned: the report says why
            state = state or self.finals.state()
            keys = [FinalKey(cell, seed) for seed in self.spec.seeds]
            claimed = self.finals.claim(state, keys)
            if claimed is not None:
                self._run_final(*claimed)
                return True
            held += state.holders(keys)
        return False

    def _run_final(self, key: FinalKey, trial_id: int) -> None:
        best = self._tuned[tuning_cell(self.spec, key.cell)]
        assert best is not None
        method = self.spec.method(key.cell.method)
        level = level_overrides(self.spec, key.cell)
        with_costs = key.seed == self.spec.seeds[0]

        def overrides(directory: Path) -> list[str]:
            return final_overrides(self.spec, method, best, key.seed, directory, self.extra,
                                   with_costs=with_costs, level=level)  # fmt: skip

        started = time.monotonic()
        name = f"{self.spec.study}/{key.cell.path.as_posix()}/seed_{key.seed}"
        with tracked_as(name, {**self._tags(key.cell, "final"), "seed": key.seed}):
            metrics = self.finals.run(key, trial_id, overrides, self.objective)
        self.report.finals += 1
        outcome = (
            "failed (error.txt)" if metrics is None else f"{self.spec.tune.metric}={metrics.get(self.spec.tune.metric)}"
        )
        self._progress(f"[bench] {key.run}: {outcome} ({time.monotonic() - started:.1f} s)")

    def _tags(self, cell: Cell, stage: str) -> dict[str, str | None]:
        """What a protocol's run is tagged with in MLflow / TensorBoard (engine/tracking.py)."""
        return {"protocol": self.spec.study, "method": cell.method, "factor": cell.factor, "level": cell.level,
                "stage": stage}  # fmt: skip

    def run(self, wait: bool = True) -> WorkerReport:
        said = None
        waited_since = None
        while True:
            held: list[str] = []
            ran = self.step(held)
            held = list(dict.fromkeys(held))  # a method's levels share its tuning study: name it once
            if ran:
                if waited_since is not None:
                    self.report.waited_s += time.monotonic() - waited_since
                    waited_since, said = None, None
                continue
            if not held:
                break
            if not wait:
                self.report.held_by_others = held
                self.log(f"[bench] nothing left for this worker; other workers hold {len(held)}: {', '.join(held)}")
                break
            if held != said:
                self.log(f"[bench] waiting for {len(held)} held by other workers: {', '.join(held)}")
                said = held
            waited_since = waited_since or time.monotonic()
            time.sleep(self.poll_s)
        if waited_since is not None:
            self.report.waited_s += time.monotonic() - waited_since
        return self.report

    def _progress(self, line: str) -> None:
        if self.progress:
            self.log(line)

"""The worker loop: take a trial, run the objective on its overrides, record the outcome.

Several copies of this loop (processes or machines) can share one study through its storage.
The study's budget is study-wide: a worker stops when the study holds `n_trials` trials that are
finished or in progress (grid: every queued point is done). A trial that raises is recorded as
FAIL with user_attr "error" and the loop goes on; a trial pruned from its validation recall is
PRUNED; only Ctrl-C/SIGTERM stop the loop (the interrupted trial goes back in the queue as it was).
A trial whose worker died is queued again as the same trial (sweeps/storage.py), so the run that
replaces it is the run it would have been.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from finealign.engine.provenance import provenance
from finealign.engine.tracking import tracked_as
from finealign.sweeps.space import suggest, to_overrides
from finealign.sweeps.spec import SweepSpec
from finealign.sweeps.storage import (  # noqa: F401  (WORKER_ATTR, worker_label: re-exported)
    WORKER_ATTR,
    Heartbeat,
    claim_trial,
    recover_stale_trials,
    release_trial,
    still_ours,
    worker_label,
)

#: on_validation(epoch, val_metrics): what the engine calls after each validation
ValidationHook = Callable[[int, Mapping[str, Any]], None]
#: objective(overrides, on_validation) -> metrics; the default composes the config and runs the engine
Objective = Callable[[list[str], ValidationHook], Mapping[str, Any]]

ERROR_ATTR = "error"
PROVENANCE_ATTR = "provenance"
METRICS_ATTR = "metrics"


def trial_seed(study_seed: int, trial_number: int, paired: bool = True) -> int:
    """The seed a trial trains with. Paired (the default): the study seed for every trial, so all
    trials share initialisation (where shapes allow) and batch order. Per trial: fixed by the study
    seed and the trial's number (a re-run of a point left by a dead worker keeps the number of the
    first attempt, so it reproduces it)."""
    if paired:
        return study_seed
    return (study_seed * 1_000_003 + trial_number) % (2**31)


@dataclass
class WorkerStats:
    complete: int = 0
    pruned: int = 0
    failed: int = 0


class SweepWorker:
    def __init__(
        self,
        study: optuna.Study,
        storage: RDBStorage,
        spec: SweepSpec,
        objective: Objective,
        trial_overrides: tuple[str, ...] = (),
        *,
        output_root: str | None = None,
        progress: bool = True,
        poll_s: float = 1.0,
        sampler_for_trial: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    ):
        """sampler_for_trial(trial number): a sampler seeded for that trial, set before the trial's
        params are drawn, so which worker claims a trial does not change what it draws."""
        self.study, self.storage, self.spec, self.objective = study, storage, spec, objective
        self.trial_overrides = tuple(trial_overrides)
        self.output_root = output_root
        self.progress = progress
        self.poll_s = poll_s
        self.sampler_for_trial = sampler_for_trial
        self._last_counts: dict[str, int] | None = None
        self.stats = WorkerStats()
        self._study_id = storage.get_study_id_from_name(study.study_name)

    # -- budget -------------------------------------------------------------------------------
    def target(self) -> int:
        if self.spec.sampler == "grid":
            return int(self.study.user_attrs.get("grid_points", 0))
        return int(self.spec.n_trials or 0)

    def _counts(self) -> dict[str, int]:
        """Trials that use up the budget. A FAIL without an "error" was left by a dead worker and
        re-queued as a WAITING trial, so it does not count (its retry does)."""
        counts = {"done": 0, "running": 0, "waiting": 0}
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs
            ):
                counts["done"] += 1
            elif t.state == TrialState.RUNNING:
                counts["running"] += 1
            elif t.state == TrialState.WAITING:
                counts["waiting"] += 1
        return counts

    def _pop_waiting(self) -> optuna.Trial | None:
        """Claim a queued trial, lowest number first (a trial put back after its worker died runs
        where it would have); the storage's WAITING→RUNNING update succeeds for one worker only."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for frozen in sorted(waiting, key=lambda t: (int(t.user_attrs.get("retry_of", t.number)), t.number)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, frozen.number)
            try:
                if claim_trial(self.storage, trial_id):
                    if self.sampler_for_trial is not None:  # before Trial(): it draws relative params
                        self.study.sampler = self.sampler_for_trial(
                            int(frozen.user_attrs.get("retry_of", frozen.number))
                        )
                    return optuna.Trial(self.study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def poll(self) -> optuna.Trial | None:
        """One look, no waiting: a trial claimed for this worker, or None — the budget is used up
        or only other workers' trials are left (`busy()` tells which)."""
        recover_stale_trials(self.study, self.storage)
        trial = self._pop_waiting()
        if trial is not None:
            return trial
        counts = self._counts()
        if self.spec.sampler != "grid" and sum(counts.values()) < self.target():
            with warnings.catch_warnings():
                # ask/tell is deliberate: the heartbeat is this module's own thread
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                return self.study.ask()
        self._last_counts = counts
        return None

    def busy(self) -> bool:
        """After poll() returned None: trials of other workers are running (or just re-queued)."""
        counts = self._last_counts or self._counts()
        return counts["running"] > 0 or counts["waiting"] > 0

    def next_trial(self) -> optuna.Trial | None:
        """The next trial to run, or None when the study's budget is used up and nobody is running.

        While other workers still run trials, wait: if one of them dies, its point comes back
        into the queue (heartbeat) and must not be lost.
        """
        while True:
            trial = self.poll()
            if trial is not None or not self.busy():
                return trial
            time.sleep(self.poll_s)

    # -- one trial ----------------------------------------------------------------------------
    def run_trial(self, trial: optuna.Trial) -> TrialState:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        claimed = self.storage.get_trial(trial_id).datetime_start
        with Heartbeat(self.storage, trial_id, self.spec.heartbeat_s):
            try:
                trial.set_user_attr(WORKER_ATTR, worker_label())
                point = suggest(trial, self.spec)
                number = int(trial.user_attrs.get("retry_of", trial.number))
                seed = trial_seed(self.spec.seed, number, paired=self.spec.seeds == "paired")
                overrides = [*self.trial_overrides, *to_overrides(point), f"seed={seed}"]
                if self.output_root and not any(o.startswith("output_dir=") for o in overrides):
                    overrides.append(f"output_dir={self.output_root}/trial_{trial.number:04d}")
                trial.set_user_attr("seed", seed)
                trial.set_user_attr("overrides", overrides)
                name = f"{self.study.study_name}/trial_{trial.number:04d}"  # the run's name in MLflow / TensorBoard
                with tracked_as(name, {"study": self.study.study_name, "trial": trial.number}):
                    metrics = dict(self.objective(overrides, self._validation_hook(trial)))
                values = objective_values(self.spec, metrics)
                if not still_ours(self.storage, trial_id, claimed):
                    raise optuna.exceptions.UpdateFinishedTrialError("put back in the queue meanwhile")
                trial.set_user_attr(METRICS_ATTR, _jsonable(metrics))
                for o in self.spec.objectives:  # one attr per objective: optuna-dashboard shows them by name
                    trial.set_user_attr(o.metric, float(metrics[o.metric]))
                trial.set_user_attr(PROVENANCE_ATTR, provenance(overrides=overrides))
                self.study.tell(trial, values, skip_if_finished=True)
                self.stats.complete += 1
                return TrialState.COMPLETE
            except optuna.exceptions.UpdateFinishedTrialError:
                # Our heartbeats came late (a stalled machine or storage): another worker put the
                # trial back in the queue (and maybe claimed it); the retry reports it, not us.
                return TrialState.FAIL
            except optuna.TrialPruned as exc:
                trial.set_user_attr("pruned", str(exc) or "pruned")
                self.study.tell(trial, state=TrialState.PRUNED)
                self.stats.pruned += 1
                return TrialState.PRUNED
            except (KeyboardInterrupt, SystemExit):
                # Interrupted, not broken: the same trial goes back in the queue as it was.
                release_trial(self.storage, trial_id)
                raise
            except Exception as exc:  # any failure of one combination must not end the study
                trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
                if isinstance(exc, FloatingPointError):  # DivergenceError too: a diverged run is no result
                    trial.set_user_attr("diverged", True)
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
                self.study.tell(trial, state=TrialState.FAIL)
                self.stats.failed += 1
                _free_memory()
                return TrialState.FAIL

    def _validation_hook(self, trial: optuna.Trial) -> ValidationHook:
        metric = self.spec.objectives[0].metric

        def on_validation(epoch: int, val_metrics: Mapping[str, Any]) -> None:
            # Optuna records learning curves and prunes in single-objective studies only; with
            # pruner: none the NopPruner never prunes, but the curve still shows in the dashboard.
            if self.spec.multi_objective or metric not in val_metrics:
                return
            value = float(val_metrics[metric])
            trial.report(value, step=int(epoch))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: validation {metric}={value:.4g}")

        return on_validation

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> WorkerStats:
        from finealign.progress import bar as progress_bar

        bar = progress_bar(
            total=self.target(), progress=self.progress, desc=f"sweep {self.study.study_name}", unit="trial"
        )
        try:
            bar.update(self._counts()["done"])
            while (trial := self.next_trial()) is not None:
                state = self.run_trial(trial)
                bar.n = min(self._counts()["done"], bar.total or 0)
                bar.set_postfix(last=f"#{trial.number} {state.name.lower()}", failed=self.stats.failed)
                bar.refresh()
        finally:
            bar.close()
        return self.stats


def objective_values(spec: SweepSpec, metrics: Mapping[str, Any]) -> list[float]:
    values = []
    for o in spec.objectives:
        if o.metric not in metrics:
            raise KeyError(f"the run returned no metric {o.metric!r} (it returned: {', '.join(sorted(metrics))})")
        value = float(metrics[o.metric])
        if not math.isfinite(value):
            raise FloatingPointError(f"objective metric {o.metric!r} is {value} (diverged training?)")
        values.append(value)
    return values


def _jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = float(value) if math.isfinite(float(value)) else str(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy/torch scalars
            out[key] = float(value.item())
    return out


def _free_memory() -> None:
    """After a failed trial (e.g. CUDA OOM), give its memory back before the next one starts."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass

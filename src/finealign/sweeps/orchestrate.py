"""One call that runs (or joins, or resumes) a sweep and writes its report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import optuna

from finealign.errors import ConfigError
from finealign.sweeps.loader import LoadedSweep, load_sweep
from finealign.sweeps.objective import load_objective
from finealign.sweeps.outputs import SweepReport, write_report
from finealign.sweeps.runner import Objective, SweepWorker, WorkerStats
from finealign.sweeps.snapshot import composing_from, freeze_config_tree
from finealign.sweeps.storage import (
    DEFAULT_ROOT,
    check_study_name,
    default_storage_url,
    open_storage,
    with_available_driver,
)
from finealign.sweeps.study import open_study


@dataclass
class SweepResult:
    study: optuna.Study
    storage_url: str
    stats: WorkerStats  # what this worker did
    report: SweepReport | None


def run_sweep(
    sweep: LoadedSweep | list[str],
    *,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    objective: Objective | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    worker_id: int = 0,
    write_outputs: bool = True,
    adopt_config_changes: bool = False,
) -> SweepResult:
    """Run trials until the study's budget is used up; several calls may share one storage.

    sweep: a LoadedSweep, or command-line style overrides (`["sweep=toy", "data=toy"]`).
    objective: replaces the spec's objective (default: compose + run_experiment).
    Every trial composes from the config tree as it was when the sweep started (OUT/config-snapshot/,
    sweeps/snapshot.py); a changed tree is refused unless `adopt_config_changes`.
    """
    loaded = sweep if isinstance(sweep, LoadedSweep) else load_sweep(sweep)
    spec = loaded.spec
    if n_trials is not None:
        if n_trials < 1:
            raise ConfigError(f"--n-trials must be >= 1, got {n_trials}")
        spec = dataclasses.replace(spec, n_trials=n_trials)
    name = check_study_name(study_name or spec.study)
    out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / name
    url = storage or default_storage_url(name)
    snapshot = freeze_config_tree(out, adopt_changes=adopt_config_changes, what="this sweep")
    rdb = open_storage(url, spec.heartbeat_s)
    study, _ = open_study(spec, rdb, name, loaded.trial_overrides, worker_id=worker_id)
    worker = SweepWorker(
        study, rdb, spec, objective or load_objective(spec.objective, spec.experiment), loaded.trial_overrides,
        output_root=str(out / "trials"), progress=progress,
    )  # fmt: skip
    with composing_from(snapshot):
        stats = worker.run()
    report = write_report(study, out) if write_outputs else None
    return SweepResult(study=study, storage_url=url, stats=stats, report=report)


def load_report(study_name: str, storage: str | None = None, out_dir: Path | None = None) -> SweepReport:
    """Rebuild a study's table, CSV and plot from its storage."""
    check_study_name(study_name)
    url = with_available_driver(storage or f"sqlite:///{(DEFAULT_ROOT / f'{study_name}.db').resolve()}")
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise ConfigError(f"no sweep database at {url[len('sqlite:///') :]}; pass --storage URL")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except SQLAlchemyError as exc:
        raise ConfigError(f"{url} is not a readable Optuna database: {str(exc).splitlines()[0][:200]}") from exc
    except KeyError as exc:
        names = [s.study_name for s in optuna.get_all_study_summaries(url)]
        raise ConfigError(f"no study {study_name!r} in {url} (studies: {', '.join(names) or 'none'})") from exc
    return write_report(study, Path(out_dir) if out_dir is not None else DEFAULT_ROOT / study_name)

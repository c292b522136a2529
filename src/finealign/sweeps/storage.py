"""Where studies live: an SQLite file by default, any Optuna RDB URL (PostgreSQL, MySQL) to share.

Heartbeats make killed workers recoverable: a worker claims a queued trial (WAITING → RUNNING),
records its host:pid and a first heartbeat at once (`claim_trial`), and beats every `heartbeat_s`
while it runs. A RUNNING trial whose worker is gone — its process on this host no longer exists,
its heartbeat is older than 2 × heartbeat_s, or it has none and was claimed longer ago than that
(killed between the claim and the first beat) — is put back in the queue *as the same trial*
(`recover_stale_trials`: RUNNING → WAITING, keeping its number and fixed params, dropping what
the dead attempt drew or reported). The next claimant runs exactly what the first attempt would
have: the same trial number (so the same seeded sampler and the same history before it — TPE
orders its observations by trial number) and the same seed, so a protocol resumed after SIGKILL
gives the numbers of an uninterrupted run. Ctrl-C puts the current trial back the same way
(`release_trial`). A point whose worker died MAX_ATTEMPTS times stays FAIL (it probably kills its
worker: the OOM-killer), and the study records why (`failure_attr`).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from finealign.errors import ConfigError

DEFAULT_ROOT = Path("runs") / "sweeps"
#: a point whose worker died this many times stays FAIL (it probably kills its worker: OOM-killer)
MAX_ATTEMPTS = 3
#: user attributes that name what a queued trial is (a grid point, a protocol's final run); its
#: retry keeps them
REQUEUE_KEEPS = ("grid_key", "final", "run")
WORKER_ATTR = "worker"  # host:pid of the process that runs (or ran) the trial
ATTEMPT_ATTR = "attempt"  # 1 + how many workers died running it


_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_study_name(study: str) -> str:
    """A study name becomes a file name under the sweep root: letters, digits, `_ . -` only, so a
    name like `../../x` cannot put a database (or a report folder) outside it."""
    if not isinstance(study, str) or not _STUDY_NAME.fullmatch(study) or ".." in study:
        raise ConfigError(
            f"study name {study!r} must be letters, digits, '_', '.', '-' (no slashes, no '..'); "
            "it names files under runs/sweeps/"
        )
    return study


def failure_attr(trial_number: int) -> str:
    """Study user attribute that records why a trial left by a dead worker failed (a finished
    trial's own attributes can no longer be written)."""
    return f"failure_of_trial_{trial_number}"


def default_storage_url(study: str, root: Path = DEFAULT_ROOT) -> str:
    check_study_name(study)
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / f'{study}.db').resolve()}"


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Called once per trial a dead worker left RUNNING: queue the same point again."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    retried = attempt < MAX_ATTEMPTS
    reason = "its worker stopped sending heartbeats (killed, crashed or out of memory)"
    reason += f"; re-queued as attempt {attempt + 1}" if retried else f"; not retried after {attempt} attempts"
    study.set_user_attr(failure_attr(trial.number), {"reason": reason, "retried": retried})
    if not retried:
        return
    # the point it ran: queued params, and what the sampler had drawn for an empty queued trial
    params = {**trial.params, **trial.system_attrs.get("fixed_params", {})}
    attrs = {
        "retry_of": trial.user_attrs.get("retry_of", trial.number),
        "attempt": attempt + 1,
        **{key: trial.user_attrs[key] for key in REQUEUE_KEEPS if key in trial.user_attrs},
    }
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_trial(storage: RDBStorage, trial_id: int) -> bool:
    """WAITING → RUNNING for this worker, with its host:pid and a first heartbeat, in one
    transaction (the storage lets one worker do it): a worker killed at any moment after its claim
    leaves a trial that names it and beats no more, so it is noticed."""
    from optuna.storages._rdb import models  # noqa: PLC0415  (Optuna's tables; stable since v3)
    from sqlalchemy import exc, func  # noqa: PLC0415

    session = storage.scoped_session()
    try:
        trial = _locked_trial(session, trial_id)
        if trial is None or trial.state != TrialState.WAITING:
            session.rollback()
            return False
        trial.state, trial.datetime_start = TrialState.RUNNING, datetime.now()
        label = json.dumps(worker_label())
        attr = models.TrialUserAttributeModel.find_by_trial_and_key(trial, WORKER_ATTR, session)
        if attr is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=WORKER_ATTR, value_json=label))
        else:
            attr.value_json = label
        now = session.execute(func.now()).scalar_one()
        beat = session.query(models.TrialHeartbeatModel).filter(models.TrialHeartbeatModel.trial_id == trial_id)
        if beat.one_or_none() is None:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id, heartbeat=now))
        else:
            beat.update({models.TrialHeartbeatModel.heartbeat: now}, synchronize_session=False)
        session.commit()
        return True
    except exc.IntegrityError:
        session.rollback()
        return False
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def still_ours(storage: RDBStorage, trial_id: int, started: datetime | None) -> bool:
    """True while the trial is RUNNING under the claim that started at `started`: a worker whose
    heartbeats came late (a stalled machine) may have seen its trial put back and claimed again
    by another; the other one reports it then."""
    trial = storage.get_trial(trial_id)
    return trial.state == TrialState.RUNNING and trial.datetime_start == started


def _dead_here(worker: object) -> bool:
    """True when `worker` (host:pid) names a process of this host that no longer exists."""
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False


def _stale_ids(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """RUNNING trials whose worker is gone: dead on this host, silent past the grace, or never
    beating and claimed longer ago than the grace."""
    from optuna.storages._rdb import models  # noqa: PLC0415  (Optuna's tables; stable since v3)

    study_id = storage.get_study_id_from_name(study.study_name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    interval = storage.heartbeat_interval or 60
    grace = timedelta(seconds=storage.grace_period or 2 * interval)
    silent = set(storage._get_stale_trial_ids(study_id)) if storage.heartbeat_interval else set()
    ids = {storage.get_trial_id_from_study_id_trial_number(study_id, t.number): t for t in running}
    session = storage.scoped_session()
    try:
        beating = {
            row[0]
            for row in session.query(models.TrialHeartbeatModel.trial_id).filter(
                models.TrialHeartbeatModel.trial_id.in_(list(ids))
            )
        }
    finally:
        session.close()
    now = datetime.now()
    return [
        trial_id
        for trial_id, t in ids.items()
        if trial_id in silent
        or _dead_here(t.user_attrs.get(WORKER_ATTR))
        or (trial_id not in beating and t.datetime_start is not None and now - t.datetime_start > grace)
    ]


def recover_stale_trials(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Queue again, as the same trials, the RUNNING trials whose worker is gone (numbers of the
    trials put back). A point whose worker died MAX_ATTEMPTS times is FAIL instead, with the reason
    in the study's user attributes."""
    back = []
    for trial_id in _stale_ids(study, storage):
        frozen = storage.get_trial(trial_id)
        attempt = int(frozen.user_attrs.get(ATTEMPT_ATTR, 1))
        if attempt >= MAX_ATTEMPTS:
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    requeue_stale_trial(study, storage.get_trial(trial_id))  # records why; no retry
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            continue
        if _back_to_queue(storage, trial_id, frozen.datetime_start):
            storage.set_trial_user_attr(trial_id, ATTEMPT_ATTR, attempt + 1)
            back.append(frozen.number)
    return back


def release_trial(storage: RDBStorage, trial_id: int) -> bool:
    """Put this worker's RUNNING trial back in the queue as it was (Ctrl-C: interrupted, not
    broken; the attempt count is unchanged)."""
    return _back_to_queue(storage, trial_id, storage.get_trial(trial_id).datetime_start)


def _locked_trial(session, trial_id: int):
    """The trial's row, locked for this transaction (None when there is none)."""
    from optuna.storages._rdb import models  # noqa: PLC0415  (Optuna's tables; stable since v3)

    return (
        session.query(models.TrialModel).filter(models.TrialModel.trial_id == trial_id).with_for_update().one_or_none()
    )


def _back_to_queue(storage: RDBStorage, trial_id: int, started: datetime | None) -> bool:
    """RUNNING → WAITING in one transaction, only if nobody claimed the trial since `started`
    (each claim sets a new start time); the dead attempt's heartbeat, drawn params and reported
    values go (a queued trial's fixed params are system attributes: they stay)."""
    from optuna.storages._rdb import models  # noqa: PLC0415

    session = storage.scoped_session()
    try:
        trial = _locked_trial(session, trial_id)
        if trial is None or trial.state != TrialState.RUNNING or trial.datetime_start != started:
            session.rollback()
            return False
        trial.state = TrialState.WAITING
        trial.datetime_start = None
        for model in (models.TrialHeartbeatModel, models.TrialParamModel, models.TrialIntermediateValueModel):
            session.query(model).filter(model.trial_id == trial_id).delete(synchronize_session=False)
        session.commit()
        return True
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    # heartbeat_interval is flagged experimental since Optuna 2.x; the sweep relies on it on purpose
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and table report instead
    url = with_available_driver(url)
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Several local workers on one file wait for the write lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=requeue_stale_trial,
            )
            if url.startswith("sqlite"):
                _immediate_transactions(storage.engine)
            return storage
        except ImportError as exc:  # e.g. postgresql:// without a driver
            cause = exc.__cause__ or exc.__context__ or exc
            raise ConfigError(
                f"storage {url!r} needs a database driver ({cause}); for PostgreSQL: pip install psycopg2-binary"
            ) from exc
        except Exception as exc:  # sqlalchemy's errors name the host/file that failed
            # Workers started together on a new database race to create its schema; the loser sees
            # a unique-constraint error (SQLite: alembic_version; PostgreSQL: pg_type). The winner's
            # schema is then there: wait a moment and open it.
            if attempt + 1 < _CREATE_ATTEMPTS and _is_schema_race(exc):
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
                continue
            raise ConfigError(f"cannot open sweep storage {url!r}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _immediate_transactions(engine) -> None:
    """Make claiming a queued trial atomic on SQLite. pysqlite begins a transaction only before
    the first write, so two workers can both read a trial as WAITING and both set it RUNNING (both
    "claim" it, and run it twice). With BEGIN IMMEDIATE every transaction takes SQLite's write
    lock first, so read-then-update is one step for the other processes (they wait for the lock;
    `timeout` above). Transactions are short: the cost is a little local concurrency."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts transactions

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the schema was checked predate the hooks


_CREATE_ATTEMPTS = 8
_RACE_MESSAGES = ("unique constraint", "duplicate key", "already exists")


def _is_schema_race(exc: BaseException) -> bool:
    """True for the errors of two workers creating the same tables at once."""
    text = str(exc).lower()
    return any(message in text for message in _RACE_MESSAGES)


def with_available_driver(url: str) -> str:
    """SQLAlchemy >= 2.1 reads a bare `postgresql://` as psycopg 3; use psycopg2 when only it is
    installed (the `postgres` extra installs psycopg2-binary)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


class Heartbeat:
    """Records a trial's heartbeat now and every `interval` seconds until the block exits."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float):
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # a lost beat only risks a retry; never kill the trial for it
                pass

    def __enter__(self) -> Heartbeat:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

"""Where studies live: an SQLite file by default, any Optuna RDB URL (PostgreSQL, MySQL) to share.

Heartbeats make killed workers recoverable: every running trial records a heartbeat every
`heartbeat_s`; a RUNNING trial silent for 2 × heartbeat_s is failed by whichever worker notices
first, and `requeue_stale_trial` puts its parameters back in the queue, so the point is re-run
once (with the same seed) and not lost.
"""

from __future__ import annotations

import random
import re
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from finealign.errors import ConfigError

DEFAULT_ROOT = Path("runs") / "sweeps"
#: a point whose worker died this many times stays FAIL (it probably kills its worker: OOM-killer)
MAX_ATTEMPTS = 3
#: user attributes that name what a queued trial is (a grid point, a protocol's final run); its
#: retry keeps them
REQUEUE_KEEPS = ("grid_key", "final", "run")


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

"""Real `finealign sweep` processes: killed and resumed (SQLite), and two workers sharing one
PostgreSQL study. The objective is the small one in tests/sweeps/objectives.py, slowed down to
~0.5 s per trial so that the kill lands mid-study and the workers overlap."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections import Counter

import optuna
import pytest

from finealign.sweeps.runner import trial_seed
from finealign.sweeps.storage import with_available_driver
from tests.sweeps.conftest import FAKE, cli

COMPLETE = optuna.trial.TrialState.COMPLETE


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def completed(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # not created yet
        return []
    return [t for t in s.get_trials(deepcopy=False) if t.state == COMPLETE]


def sweep_args(storage: str, study: str, out, *extra: str) -> list[str]:
    return [
        "sweep", "sweep=toy", f"sweep.objective={FAKE}", "sweep.heartbeat_s=1", *extra,
        "--storage", storage, "--study", study, "--out", str(out), "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_sweep_killed_mid_study_resumes_without_losing_or_repeating_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    # 3 aligners x 2 replicas = 6 grid points, ~1 s each
    args = sweep_args(storage, "resume", tmp_path / "out", "+sweep.params.rep={values: [0, 1]}")
    env = {"FINEALIGN_TEST_SLEEP": "0.6"}
    first = cli(args, env)
    try:
        wait_for(lambda: len(completed(storage, "resume")) >= 1, 60, "a first complete trial")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    done_before = {t.user_attrs["grid_key"] for t in completed(storage, "resume")}
    assert 1 <= len(done_before) < 6

    second = cli(args, env)
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err

    study = optuna.load_study(study_name="resume", storage=storage)
    done = [t for t in study.trials if t.state == COMPLETE]
    keys = Counter(t.user_attrs["grid_key"] for t in done)
    assert len(done) == 6 and len(keys) == 6, keys  # all points, none twice
    assert done_before <= set(keys)  # the finished ones were not re-run
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all("error" not in t.user_attrs for t in killed)  # only the trial the kill interrupted
    for t in done:  # a re-run point keeps the seed of its first attempt
        assert t.user_attrs["seed"] == trial_seed(0, t.user_attrs.get("retry_of", t.number))
    assert "6 complete" not in out  # the second run did only what was left
    assert f"{6 - len(done_before)} complete" in out


@pytest.mark.postgres
def test_two_workers_share_a_postgres_study_without_duplicated_or_lost_trials(tmp_path):
    url = os.environ.get("FINEALIGN_TEST_PG_URL")
    if not url:
        pytest.skip("FINEALIGN_TEST_PG_URL is not set (bash scripts/ci_postgres.sh starts a server)")
    study = f"workers_{uuid.uuid4().hex[:8]}"
    # 3 aligners x 4 replicas = 12 grid points shared by two workers started together
    args = sweep_args(url, study, tmp_path / "out", "+sweep.params.rep={values: [0, 1, 2, 3]}")
    env = {"FINEALIGN_TEST_SLEEP": "0.5"}
    workers = [cli([*args, "--worker-id", str(i)], env) for i in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for w, (_out, err) in zip(workers, outputs):
        assert w.returncode == 0, err

    trials = optuna.load_study(study_name=study, storage=with_available_driver(url)).trials
    done = [t for t in trials if t.state == COMPLETE]
    keys = Counter(t.user_attrs["grid_key"] for t in done)
    assert len(trials) == 12 and len(done) == 12 and len(keys) == 12, keys
    per_worker = [int(out.split(" complete,")[0].rsplit(" ", 1)[-1]) for out, _ in outputs]
    assert sum(per_worker) == 12 and min(per_worker) >= 1, per_worker  # both did real work


def _open_new_storage(url: str, results) -> None:
    from finealign.sweeps.storage import open_storage

    try:
        open_storage(url, 60)
        results.put("ok")
    except BaseException as exc:  # the parent reports it
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_new_sqlite_storage_together_all_succeed(tmp_path):
    """Creating the schema races; the loser retries and opens the winner's tables. Forked from this
    (already imported) process, the four start within milliseconds of each other."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        results = fork.Queue()
        procs = [fork.Process(target=_open_new_storage, args=(url, results)) for _ in range(4)]
        for p in procs:
            p.start()
        answers = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert answers == ["ok"] * 4, answers


def test_only_schema_creation_races_are_retried():
    from finealign.sweeps.storage import _is_schema_race

    assert _is_schema_race(Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num"))
    assert _is_schema_race(Exception('duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
    assert not _is_schema_race(Exception("could not connect to server: Connection refused"))


def _claim_all(url: str, start: float, results) -> None:
    from finealign.sweeps.storage import open_storage

    storage = open_storage(url, 60)
    study_id = storage.get_study_id_from_name("race")
    while time.time() < start:
        time.sleep(0.001)
    claimed = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.RUNNING):
                claimed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    results.put(claimed)


def test_a_queued_trial_on_sqlite_is_claimed_by_one_worker_only(tmp_path):
    """pysqlite reads outside a transaction, so plain Optuna on SQLite lets two processes both move
    one WAITING trial to RUNNING (measured: 4 of 40 trials claimed twice by 4 processes);
    open_storage's BEGIN IMMEDIATE makes the claim atomic."""
    import multiprocessing

    from finealign.sweeps.storage import open_storage

    url = f"sqlite:///{tmp_path / 'claims.db'}"
    study = optuna.create_study(storage=open_storage(url, 60), study_name="race")
    for _ in range(40):
        study.enqueue_trial({})
    fork = multiprocessing.get_context("fork")
    results, start = fork.Queue(), time.time() + 2.0  # all four start claiming in the same instant
    procs = [fork.Process(target=_claim_all, args=(url, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    claims = Counter(n for _ in procs for n in results.get(timeout=120))
    for p in procs:
        p.join(timeout=30)
    assert sum(claims.values()) == 40 and set(claims.values()) == {1}, claims

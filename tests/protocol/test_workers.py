"""`finealign bench` workers sharing one storage and one protocol folder (separate processes): every
final run (method, level, seed) is run by exactly one of them, each tuning budget is spent once,
the table equals one worker's, a worker SIGKILLed mid-run is taken over (its process is gone),
and a worker with nothing left names who holds the rest.

Workers are forked processes running what `finealign bench` runs (protocol.run.run_worker), so a
test does not pay a fresh interpreter's imports per worker; the idle worker goes through the CLI.
The runs are tests/protocol/objectives.py:ranked (milliseconds; FINEALIGN_TEST_SLEEP slows the
final runs down so that workers overlap). Tuning uses `tune.sampler=random`: each trial's params
are drawn from a sampler seeded by the trial's number (protocol/worker.py), so the tuned params —
and with them the whole table — are the same for any number of workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest

from finealign.protocol.finals import all_finals
from finealign.protocol.loader import load_protocol
from finealign.protocol.outputs import write_protocol_report
from finealign.protocol.run import run_protocol, run_worker
from finealign.sweeps.storage import with_available_driver

FAKE = "tests.protocol.objectives:ranked"
PROTOCOL = ["protocol=toy_ablation", f"protocol.objective={FAKE}", "protocol.tune.sampler=random",
            "protocol.heartbeat_s=2"]  # fmt: skip
COMPLETE = optuna.trial.TrialState.COMPLETE
FORK = multiprocessing.get_context("fork")


def _work(spec, extra, storage, out, sleep, wait, results) -> None:
    os.environ["FINEALIGN_TEST_SLEEP"] = str(sleep)
    _, did = run_worker(spec, extra, storage=storage, out_dir=out, progress=False, wait=wait)
    results.put((os.getpid(), did.tuning_trials, did.finals, did.held_by_others))


def workers(spec, extra, storage: str, out: Path, n: int, sleep: float = 0.0):
    """n worker processes started together; (processes, their results queue)."""
    results = FORK.Queue()
    procs = [FORK.Process(target=_work, args=(spec, extra, storage, out, sleep, True, results)) for _ in range(n)]
    for p in procs:
        p.start()
    return procs, results


def finish(procs, results, timeout: float = 240) -> list[tuple]:
    done = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return done


def finals_trials(storage: str, study: str = "toy_ablation") -> list[optuna.trial.FrozenTrial]:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.load_study(study_name=f"{study}-finals", storage=with_available_driver(storage)).trials
    except KeyError:
        return []
    except SQLAlchemyError:  # polled while a worker creates the schema (both create alembic_version)
        return []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The reference: the same protocol run by one worker."""
    where = tmp_path_factory.mktemp("one")
    spec, extra = load_protocol(PROTOCOL)
    storage = f"sqlite:///{where / 'one.db'}"
    run_protocol(spec, extra, storage=storage, out_dir=where / "out", progress=False)
    return spec, extra, write_protocol_report(where / "out", storage)


def check_shared_run(spec, storage: str, out: Path, reference) -> None:
    """Exactly one final per (method, level, seed), each budget spent once, the same table."""
    expected = {k.run for k in all_finals(spec)}
    done = Counter(t.user_attrs["run"] for t in finals_trials(storage, spec.study) if t.state == COMPLETE)
    assert set(done) == expected and set(done.values()) == {1}, done
    assert {str(p.parent.relative_to(out)) for p in out.glob("final/**/results.json")} == expected
    assert not list(out.glob("final/**/seed_*-1"))  # no run moved aside for a duplicate
    url = with_available_driver(storage)
    tuning = [s for s in optuna.get_all_study_summaries(url)
              if s.study_name.startswith(f"{spec.study}-") and not s.study_name.endswith("-finals")]  # fmt: skip
    assert len(tuning) == 4 and {s.n_trials for s in tuning} == {spec.tune.n_trials}
    report = write_protocol_report(out, storage)
    for mine, theirs in ((report.frame, reference.frame), (report.ablation.frame, reference.ablation.frame)):
        pd.testing.assert_frame_equal(mine, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_workers_on_sqlite_split_the_protocol_and_give_one_workers_table(n, one_worker, tmp_path):
    spec, extra, reference = one_worker
    storage, out = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "out"
    procs, results = workers(spec, extra, storage, out, n, sleep=0.3)  # together, on a fresh storage
    did = finish(procs, results)  # every worker opened the new storage (no schema race) and exited 0
    check_shared_run(spec, storage, out, reference)
    finals = [d[2] for d in did]
    assert sum(finals) == len(all_finals(spec)) and sum(f > 0 for f in finals) >= 2, did  # they shared it
    assert sum(d[1] for d in did) == 4 * spec.tune.n_trials  # and the tuning budgets, once


@pytest.mark.postgres
def test_two_workers_on_postgres_split_the_protocol(one_worker, tmp_path):
    url = os.environ.get("FINEALIGN_TEST_PG_URL")
    if not url:
        pytest.skip("FINEALIGN_TEST_PG_URL is not set (bash scripts/ci_postgres.sh starts a server)")
    spec, extra, reference = one_worker
    spec = dataclasses.replace(spec, study=f"bench_{uuid.uuid4().hex[:8]}")  # fresh studies in a shared database
    out = tmp_path / "out"
    finish(*workers(spec, extra, url, out, 2, sleep=0.3))
    check_shared_run(spec, url, out, reference)


@pytest.mark.slow
def test_a_killed_worker_s_run_is_taken_over_and_an_idle_worker_names_who_holds_what(
    one_worker, tmp_path, monkeypatch, capsys
):
    from finealign.cli.main import main as cli_main

    spec, extra, reference = one_worker
    storage, out = f"sqlite:///{tmp_path / 'kill.db'}", tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    slow = FORK.Process(target=_work, args=(spec, extra, storage, out, 120, True, FORK.Queue()))
    slow.start()  # it will hold its first final run for two minutes
    try:
        wait_for(lambda: any(t.state.name == "RUNNING" for t in finals_trials(storage)), 60, "a final run to start")
        held = next(t for t in finals_trials(storage) if t.state.name == "RUNNING")
        assert held.user_attrs["worker"].endswith(f":{slow.pid}")
        run = held.user_attrs["run"]

        # a worker that finds the rest held by others says who holds it and stops (the CLI)
        assert cli_main(["bench", *PROTOCOL, "--storage", storage, "--out", str(out), "--no-progress",
                         "--no-wait"]) == 0  # fmt: skip
        said = capsys.readouterr()
        assert f"other workers hold 1: {run} (" in said.err and f":{slow.pid})" in said.err
        assert f"held by other workers: {run}" in said.out
    finally:
        os.kill(slow.pid, signal.SIGKILL)  # mid-run: its trial stays RUNNING, its heartbeat stops
        slow.join()

    rescuers, results = workers(spec, extra, storage, out, 1)  # its process is gone: taken over at once
    ((pid, _, finals, _),) = finish(rescuers, results)
    assert finals == 1  # the killed run, and only it
    check_shared_run(spec, storage, out, reference)
    killed = [t for t in finals_trials(storage) if t.user_attrs["run"] == run]
    assert [t.state.name for t in killed] == ["COMPLETE"] and killed[0].number == held.number  # the same trial
    assert killed[0].user_attrs["attempt"] == 2 and killed[0].user_attrs["worker"].endswith(f":{pid}")

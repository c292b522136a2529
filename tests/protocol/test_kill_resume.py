"""A `finealign bench` killed with SIGKILL — mid tuning (right after it claimed a trial) and mid
final run — and run again gives the numbers of an uninterrupted run: the same tuned params, the
same final metrics, with no wait for the dead worker's heartbeat to go stale.

The toy protocol with TPE past its start-up (trial 1 on is modelled: TPE orders its observations
by trial number, so a dead trial must come back as the same trial, not as a new one at the end)
and the millisecond stand-in objective (tests/protocol/objectives.py), slowed down so that each
kill lands where it is meant to; the reference is the same protocol run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from finealign.protocol.finals import all_finals
from finealign.protocol.loader import load_protocol
from finealign.protocol.run import run_protocol, stored_outcomes

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = ["protocol=toy", "protocol.objective=tests.protocol.objectives:ranked", "protocol.tune.n_trials=3",
            "+protocol.tune.n_startup_trials=1"]  # fmt: skip


def bench(storage: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "FINEALIGN_TEST_SLEEP": "0.3",
           "FINEALIGN_TEST_TUNE_SLEEP": "0.3"}  # fmt: skip
    cmd = [sys.executable, "-m", "finealign", "bench", *PROTOCOL, "--storage", storage, "--out", str(out),
           "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def states(db: Path, study: str) -> dict[int, str]:
    """{trial number: state} of a study, read straight from the SQLite file (no Optuna in the loop)."""
    try:
        with sqlite3.connect(db, timeout=30) as con:
            rows = con.execute(
                "SELECT t.number, t.state FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = ?",
                (study,),
            ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}
    return dict(rows)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"bench exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reaped: its pid names no process any more


def finals(out: Path, spec) -> dict[str, dict]:
    return {k.run: json.loads((out / k.run / "results.json").read_text())["metrics"] for k in all_finals(spec)}


@pytest.mark.slow
def test_a_bench_killed_mid_tuning_and_mid_final_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    spec, extra = load_protocol(PROTOCOL)
    ref_storage, ref_out = f"sqlite:///{tmp_path / 'ref.db'}", tmp_path / "ref"
    reference = run_protocol(spec, extra, storage=ref_storage, out_dir=ref_out, progress=False)

    db, out = tmp_path / "killed.db", tmp_path / "killed"
    storage = f"sqlite:///{db}"
    # 1. the moment hard's first modelled trial is claimed (before or just after its first heartbeat)
    kill_when(bench(storage, out), lambda: states(db, "toy_protocol-hard").get(1) == "RUNNING", "hard trial 1")
    assert states(db, "toy_protocol-hard") == {0: "COMPLETE", 1: "RUNNING", 2: "WAITING"}
    # 2. mid final run: hard's first seed is training
    kill_when(bench(storage, out), lambda: states(db, "toy_protocol-finals").get(4) == "RUNNING", "final hard/0")
    assert not (out / "final/hard/seed_0/results.json").exists()
    # 3. the rest, uninterrupted
    last = bench(storage, out)
    stdout, stderr = last.communicate(timeout=120)
    assert last.returncode == 0, stderr[-3000:]
    assert "held by other workers" not in stderr  # the dead worker's claims came back at once

    assert {s: list(states(db, f"toy_protocol-{s}").values()) for s in ("global", "mean_max", "hard")} == {
        s: ["COMPLETE"] * 3 for s in ("global", "mean_max", "hard")
    }  # each killed trial came back as itself: no extra trial, no FAIL
    resumed = stored_outcomes(spec, storage, out)
    assert [o.tune.best_params for o in resumed] == [o.tune.best_params for o in reference]
    assert finals(out, spec) == finals(ref_out, spec)
    hard = next(o for o in resumed if o.name == "hard")
    assert [f.metrics["rsum"] for f in hard.finals] == [f.metrics["rsum"] for f in reference[2].finals]


# -- the storage's side: who notices a dead worker, and what comes back ----------------------------
def _claimed_study(tmp_path, heartbeat_s: int = 30):
    import optuna

    from finealign.sweeps.storage import claim_trial, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_s)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 0.5}, user_attrs={"run": "r"})
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 0)
    assert claim_trial(storage, trial_id) and not claim_trial(storage, trial_id)  # one claimant
    trial = optuna.Trial(study, trial_id)
    trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)  # noqa: B018
    trial.report(1.0, step=0)
    return storage, study, trial_id


def _as_worker(storage, trial_id, label: str) -> None:
    from finealign.sweeps.storage import WORKER_ATTR

    storage.set_trial_user_attr(trial_id, WORKER_ATTR, label)


def test_a_trial_whose_process_is_gone_comes_back_at_once_as_the_same_trial(tmp_path):
    import socket

    from finealign.sweeps.storage import recover_stale_trials, still_ours

    storage, study, trial_id = _claimed_study(tmp_path)
    started = storage.get_trial(trial_id).datetime_start
    assert recover_stale_trials(study, storage) == []  # ours, alive, beating
    dead = subprocess.Popen(["true"])
    dead.wait()
    _as_worker(storage, trial_id, f"{socket.gethostname()}:{dead.pid}")
    assert recover_stale_trials(study, storage) == [0]
    back = storage.get_trial(trial_id)
    assert back.state.name == "WAITING" and back.number == 0 and back.params == {} and back.intermediate_values == {}
    assert back.user_attrs["attempt"] == 2 and back.user_attrs["run"] == "r"
    assert back.system_attrs["fixed_params"] == {"x": 0.5}  # what was queued stays
    assert not still_ours(storage, trial_id, started)  # the old claimant may no longer report it


def test_a_trial_claimed_on_another_host_waits_for_the_grace_and_one_that_never_beat_comes_back(tmp_path):
    from optuna.storages._rdb import models

    from finealign.sweeps.storage import recover_stale_trials

    storage, study, trial_id = _claimed_study(tmp_path, heartbeat_s=3600)
    _as_worker(storage, trial_id, "elsewhere:1")
    assert recover_stale_trials(study, storage) == []  # alive as far as anyone here can tell
    session = storage.scoped_session()  # killed between its claim and a first heartbeat, long ago
    session.query(models.TrialHeartbeatModel).delete()
    session.query(models.TrialModel).one().datetime_start = datetime(2000, 1, 1)
    session.commit()
    assert recover_stale_trials(study, storage) == [0]


def test_a_point_that_killed_its_worker_max_attempts_times_stays_failed_with_the_reason(tmp_path):
    import socket

    from finealign.sweeps.storage import ATTEMPT_ATTR, MAX_ATTEMPTS, failure_attr, recover_stale_trials

    storage, study, trial_id = _claimed_study(tmp_path)
    storage.set_trial_user_attr(trial_id, ATTEMPT_ATTR, MAX_ATTEMPTS)
    dead = subprocess.Popen(["true"])
    dead.wait()
    _as_worker(storage, trial_id, f"{socket.gethostname()}:{dead.pid}")
    assert recover_stale_trials(study, storage) == []
    assert storage.get_trial(trial_id).state.name == "FAIL"
    assert "not retried" in study.user_attrs[failure_attr(0)]["reason"]


def test_a_results_json_cut_short_is_no_result(tmp_path):
    from finealign.protocol.finals import read_final

    (tmp_path / "results.json").write_text('{"metrics": {"rsum": 1')
    assert read_final(tmp_path) is None
    (tmp_path / "results.json").write_text('{"metrics": {"rsum": 1.0}}')
    assert read_final(tmp_path) == {"rsum": 1.0}

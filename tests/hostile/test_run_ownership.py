"""Runs that overwrite each other, and tracking that kills training (issue 26): a run directory is
claimed atomically, so two runs never share one (given one output_dir, or the default one in the
same second); a tracking sink that fails warns, is recorded in results.json and training goes on."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from omegaconf import OmegaConf

from finealign.engine import tracking
from finealign.engine.experiment import CLAIM_FILE, claim_output_dir, run_experiment
from tests.hostile.test_runs import toy


def _claim_many(target, count):
    """`count` threads claim `target` at the same moment; the directories they got."""
    barrier, got = threading.Barrier(count), []

    def claim():
        cfg = OmegaConf.create({"output_dir": str(target), "train": {"resume": None}})
        barrier.wait()
        got.append(claim_output_dir(cfg))

    threads = [threading.Thread(target=claim) for _ in range(count)]
    with pytest.warns(UserWarning, match="belongs to another run"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return got


def test_runs_claiming_one_directory_at_the_same_moment_get_one_each(tmp_path):
    got = _claim_many(tmp_path / "run", 6)
    assert len(set(got)) == 6 and tmp_path / "run" in got
    assert all((d / CLAIM_FILE).is_file() for d in got)


def test_the_default_timestamped_output_dir_is_claimed_even_within_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = (toy_default() for _ in range(2))
    second.output_dir = str(first.output_dir)  # the same second: the same default (pinned, not raced)
    assert "${now:" in OmegaConf.to_yaml(toy_default(), resolve=False)  # the default is timestamped
    a, b = claim_output_dir(first), claim_output_dir(second)
    assert a != b and b.name == f"{a.name}-1"


def toy_default():
    from finealign.config import compose

    return compose(overrides=["data=toy", "encoder=toy", "train=quick"])


def _claimed_by(directory, pid):
    directory.mkdir(parents=True)
    (directory / CLAIM_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 1.0}))


def test_a_directory_whose_claimant_died_without_results_is_taken_over_by_one_rerun(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer exists: a run killed (or failed) before writing results
    _claimed_by(tmp_path / "killed", dead.pid)
    got = _claim_many(tmp_path / "killed", 4)  # four re-runs at once: exactly one takes its place
    assert got.count(tmp_path / "killed") == 1 and len(set(got)) == 4
    _claimed_by(tmp_path / "live", os.getppid())  # a claimant still running keeps its directory
    cfg = OmegaConf.create({"output_dir": str(tmp_path / "live"), "train": {"resume": None}})
    with pytest.warns(UserWarning):
        assert claim_output_dir(cfg) == tmp_path / "live-1"


def test_a_resumed_run_keeps_its_claimed_directory(tmp_path):
    cfg = OmegaConf.create({"output_dir": str(tmp_path / "run"), "train": {"resume": None}})
    claimed = claim_output_dir(cfg)
    again = OmegaConf.create({"output_dir": str(claimed), "train": {"resume": "auto"}})
    assert claim_output_dir(again) == claimed


def _train_command(out):
    """A `finealign train` on toy data into `out`, as a user would start it from a shell."""
    overrides = [
        "data=toy", "encoder=toy", "train=quick", f"output_dir={out}", "train.progress=false",
        "eval.progress=false", "device=cpu", "data.num_train=64", "data.num_val=16", "data.num_test=16",
        "train.batch_size=16", "train.epochs=1", "train.tensorboard=false", "eval.save_ranks=false",
    ]  # fmt: skip
    return [sys.executable, "-m", "finealign", "train", *overrides]


@pytest.mark.slow
def test_two_train_runs_into_one_output_dir_both_keep_their_results(tmp_path):
    # Two separate processes (not forks of this one: a fork of a process whose OpenMP pool already
    # runs can hang in its first matrix product), started together, both told to write into `out`.
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_train_command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    dirs = sorted(p for p in tmp_path.iterdir() if (p / "results.json").is_file())
    assert [d.name for d in dirs] == ["shared", "shared-1"]
    for d in dirs:  # each directory holds one whole run, written by one process
        claim = json.loads((d / CLAIM_FILE).read_text())
        saved = json.loads((d / "results.json").read_text())
        assert saved["output_dir"] == str(d) and claim["pid"] in [p.pid for p in procs]
    assert len({json.loads((d / CLAIM_FILE).read_text())["pid"] for d in dirs}) == 2


# -- tracking sinks ---------------------------------------------------------------------------------
def test_a_tracking_sink_that_fails_mid_run_is_recorded_and_training_finishes(tmp_path, monkeypatch, caplog):
    calls = []

    def failing_log(self, scalars, step):
        calls.append(step)
        if step == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoardSink, "log", failing_log)
    result = run_experiment(toy(tmp_path, "train.epochs=4", "train.tensorboard=true"))
    assert result["epochs"] == 4 and calls == [1, 2]  # dropped after its failure, training went on
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tracking_failures"] == [
        "TensorBoard logging epoch 2 failed: OSError: [Errno 28] No space left on device"
    ]
    assert (tmp_path / "model.pt").is_file()
    assert "training goes on without TensorBoard" in caplog.text


pytest.importorskip("mlflow")


@pytest.mark.parametrize("store", ["file", "http"])
def test_an_unwritable_or_absent_mlflow_store_does_not_stop_training(tmp_path, store):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    # a SQLite file under a regular file cannot be created; a closed port answers nothing
    uri = f"sqlite:///{blocker / 'mlflow.db'}" if store == "file" else "http://127.0.0.1:9"
    started = time.perf_counter()
    result = run_experiment(toy(tmp_path / "run", "train.epochs=1", "train.tensorboard=false", "train.mlflow=true",
                                f"train.mlflow_tracking_uri={uri}"))  # fmt: skip
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["epochs"] == 1 and len(saved["tracking_failures"]) == 1
    assert saved["tracking_failures"][0].startswith(f"MLflow open of the store {uri} failed")
    assert time.perf_counter() - started < 120  # MLflow's own retries would wait ~254 s before failing


def test_mlflow_http_limits_are_set_while_a_sink_talks_and_a_users_own_win(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with tracking.mlflow_http_limits():
        assert (
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
        )
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ

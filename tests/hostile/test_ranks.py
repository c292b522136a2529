"""torchrun ranks that disagree (issue 26): a rank started with another lr or seed once trained its
share differently, exited 0, and results.json recorded rank 0's settings. Now every rank compares
the resolved config at start and every rank raises the same ConfigError naming the keys.

Two gloo processes, started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_* set), each
calling `run_experiment` — the path of `torchrun --nproc_per_node 2 -m finealign train ...`."""

import os
import pickle
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from tests.engine.test_distributed import _free_port

WORLD = 2


def _worker(rank: int, port: int, out: str, extra: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))  # fmt: skip
    result: dict = {}
    try:
        from finealign.engine.experiment import run_experiment
        from tests.hostile.test_runs import toy

        started = time.perf_counter()
        run_experiment(toy(Path(out) / "run", "train.dist_timeout_s=30", *extra))
        result["finished"] = True
    except BaseException as exc:  # what this rank ended with
        result["error"] = (type(exc).__name__, str(exc))
    result["seconds"] = time.perf_counter() - started
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


@pytest.mark.slow
def test_ranks_started_with_different_settings_all_stop_naming_the_keys(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    extras = [["train.lr=0.002"], ["train.lr=0.5", "seed=7"]]  # rank 1: another lr and seed
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path), extras[r])) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        if p.is_alive():
            p.kill()
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert "finished" not in result, f"rank {rank} trained with settings its peer did not share"
        kind, message = result["error"]
        assert kind == "ConfigError", message
        assert "seed (rank 0: 0, rank 1: 7)" in message and "train.lr (rank 0: 0.002, rank 1: 0.5)" in message
        assert result["seconds"] < 30  # at start, before any data is read
    assert not (tmp_path / "run" / "results.json").exists()

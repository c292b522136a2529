"""Wall time of a protocol run by 1 worker and by N `finealign bench` workers sharing one SQLite
storage and protocol folder, interleaved (1, N, 1, N, ...), each run on a fresh storage; every
worker a separate process with 1 torch thread. Prints each wall time and the ratio of medians.

    PYTHONPATH=src python benchmarks/protocol_workers.py --workers 2 --repeats 2 \
        protocol=toy_ablation

The work splits at trial and final-run granularity (protocol/worker.py); what stays serial: each
process's start (imports, composing every method and level), a method's finals waiting for its
last tuning trial, and SQLite's one writer at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(workers: int, overrides: list[str], where: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    code = "import sys; from finealign.cli.main import main; sys.exit(main())"
    args = ["bench", *overrides, "device=cpu", "--storage", f"sqlite:///{where / 'bench.db'}", "--out",
            str(where / "out"), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    # each worker in a session of its own, like separate terminals or SLURM tasks: with the kernel's
    # autogroup scheduling, processes of one session share one session's CPU share
    procs = [subprocess.Popen([sys.executable, "-c", code, *args], cwd=where, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for _ in range(workers)]  # fmt: skip
    outputs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - start
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}):\n{err[-3000:]}")
        print("   ", out.strip().splitlines()[-1])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=["protocol=toy_ablation"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], args.workers: []}
    for rep in range(args.repeats):
        for n in (1, args.workers):
            with tempfile.TemporaryDirectory() as tmp:
                seconds = one_run(n, args.overrides, Path(tmp))
            times[n].append(seconds)
            print(f"repeat {rep}: {n} worker(s): {seconds:.1f} s", flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(
        f"median wall time: 1 worker {one:.1f} s, {args.workers} workers {many:.1f} s; speed-up {one / many:.2f}x "
        f"({os.cpu_count()} CPUs; 1-min load average at the end: {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()

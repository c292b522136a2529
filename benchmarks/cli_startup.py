"""Start-up time of the CLI's quick answers (`--help`, `list`, shell completion), before and
after, measured in one run: each command run REPEATS times, interleaved, with PYTHONPATH set to
each source tree; prints the median wall time, the ratio, and the total `-X importtime` of
`--help`, and whether torch was imported.

    python benchmarks/cli_startup.py --before /work/main/src --after src [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["list"], ["__complete", "train", "train.l"], ["__complete", "train", "aligner=me"])


def run(src: str, argv: list[str], importtime: bool = False) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    flags = ["-X", "importtime"] if importtime else []
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "-m", "finealign", *argv], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for argv in COMMANDS:  # warm the page cache and the completion cache
        run(args.before, argv), run(args.after, argv)
    print(f"{'command':32s} {'before s':>9s} {'after s':>9s} {'ratio':>7s}")
    for argv in COMMANDS:
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            for label in ("before", "after"):
                times[label].append(run(getattr(args, label), argv)[0])
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"{' '.join(argv):32s} {b:9.2f} {a:9.2f} {b / a:7.1f}x")
    for label in ("before", "after"):
        log = run(getattr(args, label), ["--help"], importtime=True)[1]
        rows = [r for r in log.splitlines() if r.startswith("import time:") and "|" in r]
        total = sum(int(r.split("|")[0].split(":")[1]) for r in rows if r.split("|")[0].split(":")[1].strip().isdigit())
        torch = any(re.search(r"\|\s+torch$", r) for r in rows)
        print(f"-X importtime --help ({label}): {total / 1e6:.2f} s of imports, torch imported: {torch}")


if __name__ == "__main__":
    main()

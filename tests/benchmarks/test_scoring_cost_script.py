"""benchmarks/scoring_cost_cpu.py runs end to end on a tiny gallery and prints, for each aligner,
ms/query and its ratios to the floor at every batch size asked for (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_scoring_cost_script_prints_every_column(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "scoring_cost_cpu.py"), "--captions", "20", "--repeats", "1",
           "--aligners", "mean_max,two_stage", "--batches", "1,2"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    header = next(line for line in out.splitlines() if line.startswith("| aligner") and "prep ms" in line)
    for q in (1, 2):
        for column in (f"ms/query @{q}", f"× floor @{q}", f"× floor on the fly @{q}"):
            assert column in header
    rows = [line for line in out.splitlines() if line.startswith(("| mean_max", "| two_stage"))]
    assert len(rows) == 4  # both aligners, in the ratio table and the floor table
    assert "nan" not in out

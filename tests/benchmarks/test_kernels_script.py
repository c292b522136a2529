"""benchmarks/kernels.py runs end to end (CPU smoke mode, Triton interpreter) and its fused rows
agree with the float64 reference — so a GPU session's short device time is not lost to a broken
script."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO


@pytest.mark.slow  # the Triton interpreter runs every lane in Python
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kernel_benchmark_cpu_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "kernels.py"),
        "--cpu-smoke",
        "--sizes",
        "cpu-smoke",
        "--no-peers",
        "--repeats",
        "0",  # run each row once, untimed: this checks the script, not the speed
        "--tiles",
        "3,2,32,4,2,p",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "kernels.csv")
    methods = set(table.method)
    for expected in (
        "fused triton",
        "fused tiles bv=3 bt=2 bk=32 w=4 s=2 packed",
        "fused sinkhorn, scaling domain",
        "mean_max pair kernel",
        "sinkhorn pair kernel (scaling)",
    ):
        assert expected in methods
    # Raw kernel rows (the "(aligner)" rows return bf16, as the aligners do).
    fused = table[table.method.str.contains("fused|pair kernel") & ~table.method.str.contains("aligner")]
    fused = fused[fused.rel_err.notna()]
    assert len(fused) >= 8 and (fused.rel_err < 1e-5).all(), fused[["method", "rel_err"]]

"""Small real objectives for the sweep machinery: deterministic functions of the overrides.

They stand in for training where a test checks the sweep mechanics, not the engine (killing a
worker at a chosen moment, failing one combination on purpose).
"""

from __future__ import annotations

import os
import time
from typing import Any


def parse(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def scored(overrides: list[str], report) -> dict[str, Any]:
    """rsum and latency from the aligner name and its params; validates through `report` twice.

    FINEALIGN_TEST_SLEEP=s makes every trial take s seconds (kill/resume and multi-worker tests).
    FINEALIGN_TEST_FAIL=NAME makes aligner=NAME raise, like an OOM or a bad combination.
    """
    kw = parse(overrides)
    aligner = kw.get("aligner", "?")
    if aligner == os.environ.get("FINEALIGN_TEST_FAIL"):
        raise RuntimeError(f"CUDA out of memory (simulated for aligner={aligner})")
    time.sleep(float(os.environ.get("FINEALIGN_TEST_SLEEP", "0")))
    quality = {"global": 300.0, "mean_max": 380.0, "hard": 400.0, "tokenflow": 420.0}.get(aligner, 350.0)
    quality += 100.0 * float(kw.get("aligner.temperature", 0.0))
    quality += (int(kw["seed"]) % 7) * 0.01  # the seed reaches the run
    for epoch in (1, 2):
        report(epoch, {"rsum": quality * epoch / 2})
    latency = {"global": 0.5, "mean_max": 2.0, "hard": 2.5, "tokenflow": 9.0}.get(aligner, 3.0)
    return {"rsum": quality, "score_latency_ms": latency, "peak_mem_mb": 10.0 * latency, "seed_used": int(kw["seed"])}

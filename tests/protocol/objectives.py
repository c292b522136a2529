"""A stand-in for training in protocol tests: deterministic in the overrides, milliseconds per run,
and for final runs (eval.split=test) it writes what a real run writes — results.json with metrics
and ranks.npz with every test query's rank — into output_dir.

Its quality: the aligner's base score, + the tuned train.lr / aligner.temperature, + the factor
levels toy_ablation sets (transformer head +, triplet loss −). Each test query is found at rank 1
when a per-query uniform number drawn from the *seed alone* is below that quality, so two methods
with one seed see the same query difficulties (paired, like real runs).

FINEALIGN_TEST_SLEEP=s: every final run takes s seconds (worker and kill tests);
FINEALIGN_TEST_TUNE_SLEEP=s: every tuning trial too.
FINEALIGN_TEST_FAIL=KEY=VALUE: a run whose overrides hold it raises (a broken level).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

N_IMAGES, CAPTIONS = 40, 2
QUALITY = {"global": 0.45, "mean_max": 0.6, "hard": 0.35, "tokenflow": 0.6}


def parse(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def quality(kw: dict[str, str]) -> float:
    q = QUALITY.get(kw.get("aligner", "?"), 0.4)
    q += 5.0 * float(kw.get("train.lr", 0.0)) + 0.2 * float(kw.get("aligner.temperature", 0.0))
    q += 0.1 * (kw.get("encoder.vision.head") == "transformer") - 0.15 * (kw.get("loss") == "triplet")
    return float(np.clip(q, 0.02, 0.98))


def ranks(q: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    u_img, u_cap = rng.random(N_IMAGES), rng.random(N_IMAGES * CAPTIONS)
    miss_img, miss_cap = rng.integers(2, 30, N_IMAGES), rng.integers(2, 30, N_IMAGES * CAPTIONS)
    return {
        "i2t": np.where(u_img < q, 1, miss_img),
        "t2i": np.where(u_cap < q, 1, miss_cap),
        "caption_item": np.repeat(np.arange(N_IMAGES), CAPTIONS),
    }


def metrics_of(r: dict[str, np.ndarray]) -> dict[str, float]:
    out = {f"{d}_r{k}": 100.0 * float(np.mean(r[d] <= k)) for d in ("i2t", "t2i") for k in (1, 5, 10)}
    out["rsum"] = sum(out.values())
    return out


def ranked(overrides: list[str], report) -> dict[str, Any]:
    kw = parse(overrides)
    fail = os.environ.get("FINEALIGN_TEST_FAIL")
    if fail and fail in overrides:
        raise RuntimeError(f"simulated failure of a run with {fail}")
    q, seed = quality(kw), int(kw["seed"])
    if kw.get("eval.split") != "test":
        time.sleep(float(os.environ.get("FINEALIGN_TEST_TUNE_SLEEP", "0")))
        report(1, {"rsum": 600.0 * q})
        return {"rsum": 600.0 * q, "score_latency_ms": 1.0}
    time.sleep(float(os.environ.get("FINEALIGN_TEST_SLEEP", "0")))
    r = ranks(q, seed)
    metrics = {**metrics_of(r), "train_time_s": 0.0}
    out = Path(kw["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "ranks.npz", **r)
    (out / "results.json").write_text(json.dumps({"metrics": metrics, "overrides": overrides}))
    return metrics

"""Statistics of a protocol: mean ± std over seeds, and paired bootstrap confidence intervals of a
method's difference to a reference, resampling test queries with seeds pooled.

The unit resampled is an image with its captions: its image→text query and its captions'
text→image queries move together (five captions of one image are not five independent queries).
Both methods are scored on the same resampled images (paired), and each image's outcome is first
averaged over the seeds both methods completed, so seed noise and query sampling are both in the
interval. R@k of a resample: i2t = mean over the drawn images of "any caption within k";
t2i = (drawn captions within k) / (drawn captions). RSUM = the six R@k summed.

Intervals are bootstrap percentiles (`scipy.stats.bootstrap`, method="percentile"). With fewer
than two shared seeds an interval is reported as unavailable, never as a zero-width one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

from finealign.errors import ShapeError

KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")
# metrics with a paired interval: the headline RSUM and R@1 both ways
COMPARED = ("rsum", "i2t_r1", "t2i_r1")


@dataclass(frozen=True)
class QueryRanks:
    """One run's rank of every test query (what ranks.npz holds)."""

    i2t: np.ndarray  # (N_img,)
    t2i: np.ndarray  # (N_cap,)
    caption_item: np.ndarray  # (N_cap,) image of each caption

    @classmethod
    def load(cls, path: str | Path) -> QueryRanks:
        with np.load(path) as f:
            return cls(i2t=f["i2t"], t2i=f["t2i"], caption_item=f["caption_item"])


@dataclass(frozen=True)
class Interval:
    estimate: float  # the difference on the full test set, seeds pooled
    low: float | None  # None: unavailable (see reason)
    high: float | None
    seeds: int  # seeds both methods completed
    reason: str = ""  # why the interval is unavailable

    @property
    def available(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (the difference is not explained by query sampling and seeds)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _image_contributions(runs: Sequence[QueryRanks], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per image, seeds averaged: (i2t part (N_img,), t2i caption count part (N_img,)) such that the
    metric of a set of images J is  sum_J(i2t)/|J| + sum_J(t2i)/captions(J)."""
    n = len(runs[0].i2t)
    parts_i2t, parts_t2i = np.zeros(n), np.zeros(n)
    wanted = [(d, k) for d in DIRECTIONS for k in KS] if metric == "rsum" else [(metric[:3], int(metric[5:]))]
    for direction, k in wanted:
        for run in runs:
            if direction == "i2t":
                parts_i2t += 100.0 * (run.i2t <= k) / len(runs)
            else:
                parts_t2i += 100.0 * np.bincount(run.caption_item, weights=run.t2i <= k, minlength=n) / len(runs)
    return parts_i2t, parts_t2i


def _check_metric(metric: str) -> None:
    allowed = ("rsum", *(f"{d}_r{k}" for d in DIRECTIONS for k in KS))
    if metric not in allowed:
        raise ValueError(f"metric {metric!r} has no bootstrap; choose one of {', '.join(allowed)}")


def _check_same_queries(runs: Sequence[QueryRanks]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.i2t.shape != first.i2t.shape or not np.array_equal(run.caption_item, first.caption_item):
            raise ShapeError(
                f"runs were tested on different queries ({len(first.i2t)} images / {len(first.caption_item)} "
                f"captions vs {len(run.i2t)} / {len(run.caption_item)}): a paired comparison needs one test set"
            )


def metric_value(runs: Sequence[QueryRanks], metric: str) -> float:
    """The metric on the full test set, averaged over the runs (seeds)."""
    _check_metric(metric)
    i2t, t2i = _image_contributions(runs, metric)
    captions = np.bincount(runs[0].caption_item, minlength=len(i2t))
    return float(i2t.sum() / len(i2t) + t2i.sum() / captions.sum())


def paired_bootstrap(
    method: Mapping[int, QueryRanks],
    reference: Mapping[int, QueryRanks],
    metric: str = "rsum",
    *,
    resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of metric(method) − metric(reference), over the seeds both have (keys: seed)."""
    _check_metric(metric)
    shared = sorted(set(method) & set(reference))
    if not shared:
        return Interval(float("nan"), None, None, 0, "no seed completed by both")
    runs_m, runs_r = [method[s] for s in shared], [reference[s] for s in shared]
    _check_same_queries([*runs_m, *runs_r])
    mi, mt = _image_contributions(runs_m, metric)
    ri, rt = _image_contributions(runs_r, metric)
    di, dt = mi - ri, mt - rt
    captions = np.bincount(runs_m[0].caption_item, minlength=len(di)).astype(float)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = idx.astype(np.int64)
        return di[idx].sum(axis) / idx.shape[axis] + dt[idx].sum(axis) / captions[idx].sum(axis)

    everyone = np.arange(len(di))
    estimate = float(statistic(everyone))
    if len(shared) < 2:
        return Interval(estimate, None, None, len(shared), f"needs >= 2 seeds of both methods (has {len(shared)})")
    result = sps.bootstrap(
        (everyone,), statistic, n_resamples=resamples, vectorized=True, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), len(shared))


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds (None: a seed without the value,
    left out); std is NaN for one seed."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")

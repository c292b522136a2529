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

import zipfile
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
RANK_ARRAYS = ("i2t", "t2i", "caption_item")


class RanksError(ShapeError):
    """A ranks.npz that cannot be what a test evaluation wrote: unreadable, missing an array, not
    whole numbers, or ranks outside 1..gallery size (a statistic from it would be a made-up one)."""


@dataclass(frozen=True)
class QueryRanks:
    """One run's rank of every test query (what ranks.npz holds)."""

    i2t: np.ndarray  # (N_img,)
    t2i: np.ndarray  # (N_cap,)
    caption_item: np.ndarray  # (N_cap,) image of each caption

    @classmethod
    def load(cls, path: str | Path) -> QueryRanks:
        """The ranks in `path`, checked (RanksError naming the file and what is impossible)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in RANK_ARRAYS if k not in f.files]
                if missing:
                    raise RanksError(f"{path} lacks {', '.join(missing)} (a ranks.npz holds {', '.join(RANK_ARRAYS)})")
                arrays = {k: _whole_numbers(np.asarray(f[k]), k, path) for k in RANK_ARRAYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, RanksError):
                raise
            raise RanksError(f"{path} is no readable ranks file ({type(exc).__name__}: {exc})") from exc
        return cls(**arrays).checked(path)

    def checked(self, where: str | Path = "ranks") -> QueryRanks:
        """Self, when every rank is possible: i2t ranks in 1..captions, t2i ranks in 1..images, one
        image (0..images-1) per caption; else RanksError."""
        n_img, n_cap = len(self.i2t), len(self.t2i)
        if len(self.caption_item) != n_cap:
            raise RanksError(f"{where}: {n_cap} caption ranks but {len(self.caption_item)} caption images")
        for name, ranks, top, what in (("i2t", self.i2t, n_cap, "captions"), ("t2i", self.t2i, n_img, "images")):
            bad = (ranks < 1) | (ranks > top)
            if bad.any():
                raise RanksError(
                    f"{where}: {int(bad.sum())} {name} ranks outside 1..{top} (the gallery has {top} {what}), "
                    f"e.g. {int(ranks[bad][0])}"
                )
        bad = (self.caption_item < 0) | (self.caption_item >= n_img)
        if bad.any():
            raise RanksError(
                f"{where}: caption_item names images outside 0..{n_img - 1}, e.g. {int(self.caption_item[bad][0])}"
            )
        return self


def _whole_numbers(values: np.ndarray, name: str, path: str | Path) -> np.ndarray:
    """A 1-D array of whole numbers as int64, or RanksError."""
    if values.ndim != 1 or values.size == 0:
        raise RanksError(f"{path}: {name} must be a non-empty 1-D array, got shape {values.shape}")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise RanksError(f"{path}: {name} must hold whole numbers, got dtype {values.dtype}")
    if not np.issubdtype(values.dtype, np.integer):
        integral = np.isfinite(values) & (values == np.round(values))
        if not integral.all():
            raise RanksError(f"{path}: {name} must hold whole numbers, got {values[~integral][0].item()!r}")
    return values.astype(np.int64)


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
            raise RanksError(
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

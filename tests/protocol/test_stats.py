"""The protocol's statistics: a paired bootstrap checked on a case computed by hand, agreement with
the engine's metrics, unavailable intervals for fewer than two seeds, mean ± std."""

import math

import numpy as np
import pytest
import torch

from finealign.engine.metrics import query_ranks, retrieval_metrics
from finealign.errors import ShapeError
from finealign.protocol.stats import QueryRanks, mean_std, metric_value, paired_bootstrap

# Two images with one caption each. The method finds image 1's caption at rank 1, the reference at
# rank 20; everything else is equal. Per image the RSUM difference is (0, 300): i2t R@1, R@5 and
# R@10 all flip for image 1. Resampling 2 images with replacement gives the mean difference
# 0 (p = 1/4), 150 (p = 1/2) or 300 (p = 1/4): estimate 150, 95% percentile interval [0, 300].
METHOD = QueryRanks(i2t=np.array([1, 1]), t2i=np.array([1, 1]), caption_item=np.array([0, 1]))
REFERENCE = QueryRanks(i2t=np.array([1, 20]), t2i=np.array([1, 1]), caption_item=np.array([0, 1]))


def test_bootstrap_on_a_case_computed_by_hand():
    rsum = paired_bootstrap({0: METHOD, 1: METHOD}, {0: REFERENCE, 1: REFERENCE}, "rsum", resamples=20_000)
    assert rsum.estimate == pytest.approx(150.0)
    assert (rsum.low, rsum.high) == (pytest.approx(0.0), pytest.approx(300.0))
    assert rsum.seeds == 2 and not rsum.significant  # the interval touches 0
    r1 = paired_bootstrap({0: METHOD, 1: METHOD}, {0: REFERENCE, 1: REFERENCE}, "i2t_r1", resamples=20_000)
    assert (r1.estimate, r1.low, r1.high) == (pytest.approx(50.0), pytest.approx(0.0), pytest.approx(100.0))
    t2i = paired_bootstrap({0: METHOD, 1: METHOD}, {0: REFERENCE, 1: REFERENCE}, "t2i_r1", resamples=2_000)
    assert (t2i.estimate, t2i.low, t2i.high) == (0.0, 0.0, 0.0)  # identical t2i ranks: no difference at all


def test_every_query_better_is_significant():
    better = QueryRanks(np.array([1, 1, 1]), np.array([1, 1, 1]), np.array([0, 1, 2]))
    worse = QueryRanks(np.array([7, 7, 7]), np.array([1, 1, 1]), np.array([0, 1, 2]))
    interval = paired_bootstrap({0: better, 1: better}, {0: worse, 1: worse}, "i2t_r1", resamples=500)
    assert interval.significant and interval.low == pytest.approx(100.0)


def test_one_seed_gives_no_interval_never_a_zero_width_one():
    interval = paired_bootstrap({0: METHOD}, {0: REFERENCE, 1: REFERENCE}, "rsum")
    assert interval.estimate == pytest.approx(150.0)  # the point difference is still known
    assert not interval.available and interval.low is None and "2 seeds" in interval.reason
    assert not interval.significant


def _runs(seed, n_img=12, caps=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(n_img).repeat_interleave(caps)
    sim = torch.randn(n_img, n_img * caps, generator=g) + 1.5 * (torch.arange(n_img)[:, None] == owner[None, :])
    ranks = query_ranks(sim, owner)
    return sim, owner, QueryRanks(ranks["i2t"].numpy(), ranks["t2i"].numpy(), owner.numpy())


def test_estimates_equal_the_engine_metrics_averaged_over_seeds():
    method, reference, engine = {}, {}, {"m": [], "r": []}
    for seed in (0, 1, 2):
        sim_m, owner, method[seed] = _runs(seed)
        sim_r, _, reference[seed] = _runs(100 + seed)
        engine["m"].append(retrieval_metrics(sim_m, owner))
        engine["r"].append(retrieval_metrics(sim_r, owner))
    for metric in ("rsum", "i2t_r1", "t2i_r1", "t2i_r10"):
        expected = np.mean([m[metric] for m in engine["m"]]) - np.mean([m[metric] for m in engine["r"]])
        assert paired_bootstrap(method, reference, metric, resamples=200).estimate == pytest.approx(expected)
        assert metric_value(list(method.values()), metric) == pytest.approx(np.mean([m[metric] for m in engine["m"]]))


def test_only_the_seeds_both_methods_completed_are_paired():
    method = {0: _runs(0)[2], 1: _runs(1)[2], 2: _runs(2)[2]}
    reference = {1: _runs(11)[2], 2: _runs(12)[2]}
    assert paired_bootstrap(method, reference, "rsum", resamples=200).seeds == 2


def test_runs_on_different_test_sets_are_refused():
    other = QueryRanks(np.array([1, 1, 1]), np.array([1, 1, 1]), np.array([0, 1, 2]))
    with pytest.raises(ShapeError, match="different queries"):
        paired_bootstrap({0: METHOD, 1: METHOD}, {0: other, 1: other}, "rsum")


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="medr"):
        paired_bootstrap({0: METHOD}, {0: REFERENCE}, "i2t_medr")


def test_mean_std_over_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)

"""Scoring cost with spread: median and quartiles per query, ratios to references timed alongside."""

import pytest
import torch

from finealign.errors import ConfigError
from finealign.profiling.scoring_cost import COST_BATCH, LATENCY_QUERIES, scoring_cost
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch


def _batch(n, length, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1::2, length // 2 :] = False  # padding in every other item
    return TokenBatch(torch.randn(n, length, dim, generator=g), mask)


@pytest.mark.parametrize("name,options", [("mean_max", {}), ("two_stage", {"top_k": 3})])
def test_costs_come_with_quartiles_and_same_run_ratios(name, options):
    visual, text = _batch(10, 6), _batch(30, 5, seed=1)
    cost = scoring_cost(create_aligner(name, **options), visual, text, rows=4, repeats=5, threads=1)
    assert cost["cost_repeats"] == 5 and cost["cost_rows"] == 4 and cost["cost_threads"] == 1
    assert cost["cost_latency_queries"] == LATENCY_QUERIES
    for key in ("cost_ms_per_query", "cost_vs_global", "cost_vs_floor", "cost_prepare_ms", "cost_latency_ms",
                "cost_latency_vs_floor", "cost_latency_vs_global"):  # fmt: skip
        assert 0 < cost[f"{key}_q25"] <= cost[key] <= cost[f"{key}_q75"], key
    for key in ("cost_ms_per_query", "cost_prepare_ms", "cost_latency_ms"):
        assert cost[f"{key}_iqr"] == pytest.approx(cost[f"{key}_q75"] - cost[f"{key}_q25"])
    assert cost["cost_queries_per_s"] == pytest.approx(1000.0 / cost["cost_ms_per_query"])
    assert cost["cost_ref_global_ms"] > 0 and cost["cost_ref_floor_ms"] > 0 and cost["cost_ref_latency_floor_ms"] > 0
    assert torch.get_num_threads() >= 1  # the pinned count is restored afterwards


def test_fewer_than_five_repeats_are_refused():
    with pytest.raises(ConfigError, match="repeats must be >= 5"):
        scoring_cost(create_aligner("global"), _batch(4, 3), _batch(4, 3), repeats=3)


def test_cost_repeats_below_five_are_a_config_error():
    from finealign.config import compose, validate

    with pytest.raises(ConfigError, match="cost_repeats"):
        validate(compose(overrides=["data=toy", "eval.cost_repeats=2"]))


def test_the_batch_of_cost_queries_has_one_default():
    from finealign.config import EvalConfig, compose

    assert EvalConfig().cost_rows == COST_BATCH == 64
    assert compose(overrides=["data=toy"]).eval.cost_rows == COST_BATCH  # configs/config.yaml mirrors it


def test_costs_are_measured_against_a_gallery_prepared_once_per_repeat():
    aligner = create_aligner("mean_max")
    calls = {"prepare": 0, "score": 0}
    prepare, score = aligner.prepare_gallery, aligner.score_prepared

    def counted_prepare(text):
        calls["prepare"] += 1
        return prepare(text)

    def counted_score(visual, gallery):
        calls["score"] += 1
        return score(visual, gallery)

    aligner.prepare_gallery, aligner.score_prepared = counted_prepare, counted_score
    scoring_cost(aligner, _batch(10, 6), _batch(30, 5, seed=1), rows=4, repeats=5, warmup=1)
    # one gallery scored by every call, plus the timed preparations (warm-up + repeats)
    assert calls["prepare"] == 1 + 1 + 5
    assert calls["score"] == (1 + 5) * (1 + LATENCY_QUERIES)

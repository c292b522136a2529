"""Latency, memory and FLOP measurements on tiny CPU problems: values are checked against hand
counts, not just for being positive."""

from __future__ import annotations

import math

import pytest
import torch

from finealign.profiling.device import pinned_threads, resolve_device
from finealign.profiling.flops import count_flops
from finealign.profiling.inputs import ProblemShape, random_input_sets
from finealign.profiling.measure import ProfileSettings, build_aligner, profile_aligners
from finealign.profiling.memory import peak_from_allocation_log, peak_memory
from finealign.profiling.timing import measure_latency, summarize

CPU = torch.device("cpu")


def test_summary_statistics_of_known_times():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0], "perf_counter")
    assert (stats.median_ms, stats.min_ms, stats.max_ms) == (3.0, 1.0, 5.0)
    assert (stats.q25_ms, stats.q75_ms, stats.iqr_ms) == (2.0, 4.0, 2.0)


def test_latency_is_positive_finite_and_rotates_inputs():
    seen = []
    sets = [(torch.full((64, 64), float(i + 1)),) for i in range(3)]

    def fn(x):
        seen.append(float(x[0, 0]))
        return x @ x

    stats = measure_latency(fn, sets, CPU, warmup=2, repeats=7)
    assert stats.repeats == 7 and stats.timer == "perf_counter"
    assert 0 < stats.min_ms <= stats.q25_ms <= stats.median_ms <= stats.q75_ms <= stats.max_ms
    assert all(math.isfinite(v) for v in (stats.min_ms, stats.max_ms))
    assert set(seen) == {1.0, 2.0, 3.0}  # every input set was used


def test_random_inputs_are_nonzero_masked_and_distinct():
    shape = ProblemShape(nv=3, nt=5, lv=6, lt=4, dim=8)
    sets = random_input_sets(shape, 2, CPU, torch.float32)
    (v0, t0), (v1, _) = sets
    assert v0.tokens.shape == (3, 6, 8) and t0.tokens.shape == (5, 4, 8)
    assert bool((v0.tokens != 0).all()) and bool((t0.tokens != 0).all())
    assert bool(v0.mask.any(1).all()) and not torch.equal(v0.tokens, v1.tokens)


def test_flops_of_mean_max_match_the_einsum_hand_count():
    nv, nt, lv, lt, d = 3, 4, 5, 6, 8
    aligner = build_aligner("mean_max", d, {"normalize": False})
    ((v, t),) = random_input_sets(ProblemShape(nv, nt, lv, lt, d), 1, CPU, torch.float32)
    # One block: every region position some image uses (the aligner cuts positions that are padding
    # in every item) times every *real* word, packed caption after caption (word → region direction).
    used_v, real_words = int(v.mask.any(0).sum()), int(t.mask.sum())
    assert count_flops(aligner, (v, t)).total == 2 * nv * used_v * real_words * d
    full = (v.__class__(v.tokens, torch.ones_like(v.mask)), t.__class__(t.tokens, torch.ones_like(t.mask)))
    assert count_flops(aligner, full).total == 2 * nv * nt * lv * lt * d


def test_flops_of_global_match_the_matmul_hand_count():
    nv, nt, d = 7, 11, 16
    aligner = build_aligner("global", d, {"normalize": False})
    ((v, t),) = random_input_sets(ProblemShape(nv, nt, 3, 2, d), 1, CPU, torch.float32)
    assert count_flops(aligner, (v, t)).total == 2 * nv * nt * d


def test_cpu_peak_memory_of_a_matmul_is_its_output():
    a, b = torch.randn(30, 17), torch.randn(17, 50)
    result = peak_memory(lambda x, y: x @ y, (a, b), CPU)
    assert result.peak_bytes == 30 * 50 * 4
    assert result.method == "torch_profiler_cpu_alloc"


def test_peak_of_allocation_log_counts_frees():
    assert peak_from_allocation_log([(0, 100), (1, 50), (2, -100), (3, 20), (4, -70)]) == 150
    assert peak_from_allocation_log([]) == 0


def test_profile_row_for_global_has_exact_flops_and_memory(monkeypatch):
    from finealign.profiling import flops

    def no_cache(*args):
        raise AssertionError("the matmul peak behind '% of peak' must be measured in this run, not cached")

    monkeypatch.setattr(flops, "_read_cache", no_cache)
    monkeypatch.setattr(flops, "_write_cache", no_cache)
    shape = ProblemShape(nv=8, nt=40, lv=4, lt=3, dim=16)
    settings = ProfileSettings(repeats=3, warmup=1, threads=1, aligner_options={"global": {"normalize": False}})
    (row,) = profile_aligners(["global"], shape, settings, progress=False)
    assert row["error"] == ""
    assert row["gflop"] * 1e9 == pytest.approx(2 * 8 * 40 * 16)
    assert row["latency_ms"] > 0 and math.isfinite(row["latency_ms"])
    # the (8, 40) fp32 score matrix is the least it must allocate
    assert row["peak_mem_mib"] * 2**20 >= 8 * 40 * 4
    assert row["threads"] == 1 and row["timer"] == "perf_counter"
    assert 0 < row["frac_of_matmul_peak"] < 10  # with a peak measured in this run (no_cache above)


def test_a_failing_aligner_becomes_an_error_row_and_the_run_goes_on():
    shape = ProblemShape(nv=2, nt=3, lv=2, lt=2, dim=4)
    settings = ProfileSettings(
        repeats=1, warmup=0, flops=False, aligner_options={"mean_max": {"direction": "sideways"}}
    )
    rows = profile_aligners(["mean_max", "global"], shape, settings, progress=False)
    assert "ConfigError" in rows[0]["error"] and "direction" in rows[0]["error"]
    assert rows[1]["error"] == "" and rows[1]["latency_ms"] > 0


def test_dim_is_passed_to_aligners_whose_config_needs_it():
    aligner = build_aligner("weighted_mean_max", 12)
    assert aligner.config.dim == 12


def test_pinned_threads_are_restored():
    before = torch.get_num_threads()
    with pinned_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cpu_device_resolves():
    assert resolve_device("cpu") == CPU


def test_backward_mode_counts_forward_and_both_gradient_matmuls():
    # scores = V Tᵀ; backward adds dV = G T and dT = Gᵀ V: three (nv, nt, d) matmuls in all
    nv, nt, d = 4, 20, 16
    settings = ProfileSettings(repeats=2, warmup=0, backward=True, aligner_options={"global": {"normalize": False}})
    (row,) = profile_aligners(["global"], ProblemShape(nv, nt, 3, 2, d), settings, progress=False)
    assert row["error"] == "" and row["mode"] == "fwd+bwd"
    assert row["gflop"] * 1e9 == pytest.approx(3 * 2 * nv * nt * d)
    assert row["peak_mem_mib"] > 0


def test_matmul_throughput_is_measured_once_and_cached(monkeypatch):
    import json

    from finealign.profiling import flops

    first = flops.matmul_throughput(CPU, torch.float32, size=128, repeats=2)
    assert first > 0 and math.isfinite(first)
    cached = json.loads((flops.cache_dir() / flops.CACHE_FILE).read_text())
    assert cached[flops.throughput_key(CPU, torch.float32)]["flops_per_s"] == first

    def no_measuring(*args):
        raise AssertionError("the cached value should have been used")

    monkeypatch.setattr(flops, "_measure_matmul", no_measuring)
    assert flops.matmul_throughput(CPU, torch.float32) == first


def test_cpu_memory_profiling_leaves_no_native_log_lines(capfd):
    from finealign.profiling.memory import peak_memory

    result = peak_memory(lambda: torch.randn(64, 64) @ torch.randn(64, 64), (), CPU)
    assert result.peak_bytes and result.peak_bytes >= 64 * 64 * 4
    err = capfd.readouterr().err
    assert "USDT" not in err and "gpuGetDeviceCount" not in err

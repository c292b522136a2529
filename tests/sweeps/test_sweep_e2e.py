"""Real sweeps end to end: the engine trains and evaluates every trial on tiny toy data."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from finealign.sweeps import load_report, run_sweep
from finealign.sweeps.runner import trial_seed
from finealign.sweeps.space import grid_points, point_key
from tests.sweeps.conftest import FAKE, from_raw, toy, toy_raw

ENGINE_METRICS = {
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
    "score_latency_ms",
    "process_peak_rss_mb",
}


def test_grid_sweep_with_the_engine_then_report_reads_back_the_same_table(where, capsys):
    loaded = toy()
    result = run_sweep(loaded, **where)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # every grid point ran exactly once, with the seed derived from the study seed and its number
    assert sorted(t.user_attrs["grid_key"] for t in trials) == sorted(map(point_key, grid_points(loaded.spec)))
    # paired seeds: every trial trains with the study seed; metric names and provenance recorded
    assert result.study.metric_names == ["rsum", "score_latency_ms"]
    assert {t.user_attrs["seed"] for t in trials} == {loaded.spec.seed}
    for t in trials:
        assert ENGINE_METRICS <= set(t.user_attrs["metrics"])
        assert t.user_attrs["seed"] == trial_seed(0, t.number)
        assert t.user_attrs["rsum"] == t.values[0] and t.user_attrs["provenance"]["torch"]
        assert f"seed={t.user_attrs['seed']}" in t.user_attrs["overrides"]
        assert t.values == [t.user_attrs["metrics"]["rsum"], t.user_attrs["metrics"]["score_latency_ms"]]
    report = result.report
    table = pd.read_csv(report.csv)
    assert len(table) == 3 and table["pareto"].any() and set(table["aligner"]) == {"global", "mean_max", "hard"}
    assert report.plot is not None and report.plot.stat().st_size > 1000
    # the rebuilt report (from storage alone) equals what the sweep wrote and printed
    again = load_report("toy", storage=where["storage"], out_dir=where["out_dir"] / "again")
    pd.testing.assert_frame_equal(pd.read_csv(again.csv), table)
    assert again.markdown == report.markdown
    # running the finished grid again resumes it: nothing is repeated
    rerun = run_sweep(loaded, **where)
    assert rerun.stats.complete == 0 and len(rerun.study.trials) == 3


def test_a_failing_combination_is_recorded_with_its_reason_and_the_study_goes_on(where):
    raw = toy_raw()
    # a negative LogSumExp temperature is a bad combination the engine rejects at config time
    raw["choose"]["aligner"] = {"global": {}, "hard": {"aligner.temperature": {"values": [0.1, -1.0]}}}
    result = run_sweep(from_raw(raw), **where)
    by_temp = {t.params.get("aligner.temperature"): t for t in result.study.trials}
    bad = by_temp[-1.0]
    assert bad.state == optuna.trial.TrialState.FAIL
    assert "ConfigError" in bad.user_attrs["error"] and "temperature" in bad.user_attrs["error"]
    assert by_temp[None].state == by_temp[0.1].state == optuna.trial.TrialState.COMPLETE
    assert result.stats.failed == 1 and result.stats.complete == 2
    row = result.report.frame.set_index("trial").loc[bad.number]
    assert row["state"] == "FAIL" and "temperature" in row["error"] and not row["pareto"]


def test_sampler_sweep_with_the_engine_single_objective_records_learning_curves(where):
    raw = toy_raw()
    raw.update(sampler="random", n_trials=2, objectives=[{"metric": "rsum"}])
    result = run_sweep(from_raw(raw), **where)
    trials = result.study.trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:  # the engine called report(epoch, val_metrics) after each validation
        assert len(t.intermediate_values) >= 1
        assert t.params["aligner"] in {"global", "mean_max", "hard"}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_samplers_fill_the_study_wide_budget_and_resume_to_it(where, sampler):
    raw = toy_raw()
    raw.update(sampler=sampler, n_trials=5, objective=FAKE)
    raw["choose"]["aligner"]["hard"] = {"aligner.temperature": {"low": 0.05, "high": 0.5, "log": True}}
    first = run_sweep(from_raw(raw), n_trials=3, write_outputs=False, **where)
    assert len(first.study.trials) == 3
    second = run_sweep(from_raw(raw), **where)  # same study: runs only what is missing
    trials = second.study.trials
    assert second.stats.complete == 2 and len(trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        if t.params["aligner"] == "hard":
            assert 0.05 <= t.params["aligner.temperature"] <= 0.5
        else:
            assert "aligner.temperature" not in t.params
    front = second.report.frame[second.report.frame["pareto"]]
    assert len(front) >= 1


def test_median_pruner_stops_a_trial_whose_validation_recall_lags(where):
    raw = toy_raw()
    raw.update(objective=FAKE, objectives=["rsum"], pruner={"name": "median", "n_startup_trials": 2})
    raw["choose"]["aligner"] = {"mean_max": {}, "hard": {}, "global": {}}  # grid order: global last
    result = run_sweep(from_raw(raw), **where)
    states = {t.params["aligner"]: t for t in result.study.trials}
    assert states["mean_max"].state == states["hard"].state == optuna.trial.TrialState.COMPLETE
    assert states["global"].state == optuna.trial.TrialState.PRUNED
    assert "pruned at epoch 1" in states["global"].user_attrs["pruned"]


def test_a_changed_sweep_cannot_join_an_existing_study(where):
    from finealign.errors import ConfigError

    raw = toy_raw()
    raw["objective"] = FAKE
    run_sweep(from_raw(raw), n_trials=1, write_outputs=False, **where)
    raw["overrides"] = [*raw["overrides"], "train.lr=0.5"]
    with pytest.raises(ConfigError, match="created by a different sweep"):
        run_sweep(from_raw(raw), **where)


def test_report_prints_latex_booktabs(where, capsys):
    from finealign.cli.main import main as cli_main

    run_sweep(toy(), **where)
    capsys.readouterr()
    assert (
        cli_main(["report", "toy", "--storage", where["storage"], "--out", str(where["out_dir"]), "--format", "latex"])
        == 0
    )
    tex = capsys.readouterr().out
    assert tex.count("\\toprule") == 1 and "\\midrule" in tex and "\\bottomrule" in tex and "mean\\_max" in tex
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    header_cols = tex.split("\\toprule")[1].split("\\midrule")[0].count("&")
    assert len(body) == 3 and all(line.count("&") == header_cols and line.endswith("\\\\") for line in body)

"""Ablation as a protocol (factors): the spec refuses bad factors by name, every method × level is
composed before anything runs, the runs land one per method × level × seed (bases shared), resume
repeats nothing, and the report's rows, intervals, verdicts and forest plot are right.

The runs use tests/protocol/objectives.py:ranked (milliseconds, writes results.json + ranks.npz)
instead of training; configs/protocol/toy_ablation.yaml itself trains for real."""

import dataclasses
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from finealign.errors import ConfigError
from finealign.protocol.ablation import _verdicts, side
from finealign.protocol.cells import Cell, cells
from finealign.protocol.loader import check_methods_compose, load_protocol
from finealign.protocol.outputs import write_protocol_report
from finealign.protocol.run import default_storage, run_protocol, tune_sampler
from finealign.protocol.spec import ProtocolSpec
from finealign.protocol.stats import QueryRanks, paired_bootstrap
from tests.protocol import objectives

FAKE = "tests.protocol.objectives:ranked"
METHODS = {"g": {"overrides": ["aligner=global"]}, "h": {"overrides": ["aligner=hard"]}}


def spec_with(factors) -> ProtocolSpec:
    return ProtocolSpec.from_dict({"study": "p", "methods": METHODS, "factors": factors})


@pytest.mark.parametrize("factors,match", [
    ({"head": {"levels": {"mlp": ["encoder.vision.head=mlp"], "t": ["x=1"]}}}, "first level is the base"),
    ({"head": {"levels": {"mlp": [], "t": ["seed=3"]}}}, r"factors.head.levels.t sets 'seed'"),
    ({"head": {"levels": {"mlp": [], "t": ["output_dir=/tmp/x"]}}}, "sets 'output_dir'"),
    ({"head": {"levels": {"mlp": []}}}, "at least two"),
    ({"head": {"levels": {"mlp": [], "t": ["a=1"]}, "methods": ["gg"]}}, r"no method 'gg'; did you mean 'g'"),
    ({"head": {"levels": {"mlp": [], "t": ["a=1"]}, "retun": True}}, r"did you mean 'retune'"),
    ({"head": {"levels": {"mlp": [], "t": ["a=1"]}, "retune": "yes"}}, "retune must be true or false"),
    ({"loss": {"levels": {"nce": [], "own": {"h": ["loss=triplet"]}}}}, "gives no overrides for g"),
    ({"loss": {"levels": {"nce": [], "own": {"x": ["loss=triplet"], "default": []}}}}, "no method 'x'"),
    ({"a-b": {"levels": {"mlp": [], "t": ["a=1"]}}}, "factor name 'a-b'"),
    ({"head": {"levels": {"mlp": [], "t t": ["a=1"]}}}, "level name 't t'"),
    ({"head": {"levels": {"mlp": [], "t": ["noequals"]}}}, "strings like"),
])  # fmt: skip
def test_bad_factors_are_named(factors, match):
    with pytest.raises(ConfigError, match=match):
        spec_with(factors)


def test_cells_share_the_base_and_skip_levels_that_change_nothing():
    spec = spec_with({
        "head": {"levels": {"mlp": [], "t": ["encoder.vision.head=transformer"]}, "methods": ["h"]},
        "loss": {"retune": True, "levels": {"nce": [], "own": {"h": ["loss=triplet"], "default": []}}},
    })  # fmt: skip
    assert cells(spec) == [Cell("g"), Cell("h"), Cell("h", "head", "t"), Cell("h", "loss", "own")]
    assert cells(spec, factors=[]) == [Cell("g"), Cell("h")]  # --factors none
    assert cells(spec, methods=["g"], factors=["loss"]) == [Cell("g")]  # g's "own" is its base
    assert spec.factor("loss").level("own").for_method("g") == ()


def test_tpe_start_up_count_is_the_protocols():
    spec = dataclasses.replace(spec_with({}), tune=dataclasses.replace(spec_with({}).tune, n_startup_trials=3))
    assert tune_sampler(spec, 0)._n_startup_trials == 3
    assert ProtocolSpec.from_dict({"study": "p", "methods": METHODS}).tune.n_startup_trials == 10  # Optuna's


def test_a_level_with_an_unknown_key_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, extra = load_protocol(["protocol=toy_ablation"])
    head = spec.factor("head")
    typo = dataclasses.replace(head.levels[1], overrides={"default": ("encoder.vision.haed=transformer",)})
    bad = dataclasses.replace(spec, factors=(dataclasses.replace(head, levels=(head.levels[0], typo)),))
    with pytest.raises(ConfigError, match="method 'global', factor 'head', level 'transformer'"):
        check_methods_compose(bad, extra)


@pytest.fixture
def ablation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, extra = load_protocol(["protocol=toy_ablation", f"protocol.objective={FAKE}"])
    calls = []

    def objective(overrides, report):
        calls.append(list(overrides))
        return objectives.ranked(overrides, report)

    out, storage = tmp_path / "bench", default_storage(spec.study, tmp_path)
    return spec, extra, out, storage, objective, calls


def finals_run(calls) -> list[str]:
    return sorted(next(o for o in c if o.startswith("output_dir=")) for c in calls if "eval.split=test" in c)


def test_ablation_runs_each_cell_once_resumes_and_reports(ablation):
    spec, extra, out, storage, objective, calls = ablation
    run = dict(storage=storage, out_dir=out, objective=objective, progress=False)

    # in chunks: the bases first, then one factor, then the rest
    run_protocol(spec, extra, factors=[], **run)
    assert finals_run(calls) == sorted(f"output_dir={out}/final/{m}/seed_{s}" for m in ("global", "mean_max", "hard")
                                       for s in (0, 1))  # fmt: skip
    run_protocol(spec, extra, factors=["head"], **run)
    run_protocol(spec, extra, **run)
    expected = {
        *(f"final/{m}/seed_{s}" for m in ("global", "mean_max", "hard") for s in (0, 1)),
        *(f"final/{m}/head-transformer/seed_{s}" for m in ("global", "hard") for s in (0, 1)),  # mean_max sits out
        *(f"final/hard/loss-own/seed_{s}" for s in (0, 1)),  # global, mean_max: "own" = their base
    }
    ran = finals_run(calls)
    assert len(ran) == len(set(ran)) == len(expected)  # exactly one run per method × level × seed
    assert {r.split(f"{out}/", 1)[1] for r in ran} == expected
    assert {str(p.parent.relative_to(out)) for p in out.glob("final/**/results.json")} == expected
    # the level goes on top of the tuned params (the level wins), and loss=own was re-tuned with triplet
    head_run = next(c for c in calls if f"output_dir={out}/final/hard/head-transformer/seed_0" in c)
    assert "encoder.vision.head=transformer" in head_run and any(o.startswith("aligner.temperature=") for o in head_run)
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert studies == {f"toy_ablation-{m}": 2 for m in ("global", "mean_max", "hard")} | {
        "toy_ablation-hard-loss=own": 2, "toy_ablation-finals": len(expected)}  # fmt: skip
    finals = optuna.load_study(study_name="toy_ablation-finals", storage=storage).trials
    assert sorted(t.user_attrs["run"] for t in finals if t.state.name == "COMPLETE") == sorted(expected)
    retuned = optuna.load_study(study_name="toy_ablation-hard-loss=own", storage=storage)
    assert all("loss=triplet" in t.user_attrs["overrides"] for t in retuned.trials)
    assert json.loads((out / "protocol.json").read_text())["spec"]["tune"]["n_startup_trials"] == 10

    calls.clear()  # resume: nothing left to do
    run_protocol(spec, extra, **run)
    assert calls == []

    report = write_protocol_report(out, storage)
    assert report.ablation is not None and report.tuning is not None and report.tuning.stat().st_size > 0
    frame = report.ablation.frame.set_index(["factor", "level", "method"])
    assert list(frame.index) == [
        ("head", "linear", "global"), ("head", "linear", "hard"),
        ("head", "transformer", "global"), ("head", "transformer", "hard"),
        ("loss", "infonce", "global"), ("loss", "infonce", "mean_max"), ("loss", "infonce", "hard"),
        ("loss", "own", "global"), ("loss", "own", "mean_max"), ("loss", "own", "hard"),
    ]  # fmt: skip
    for col in ("base_d_rsum", "base_d_rsum_low", "base_d_rsum_high", "ref_d_rsum", "ref_d_rsum_low",
                "ref_d_i2t_r1_high", "ref_d_t2i_r1_significant", "verdict", "rsum_mean", "rsum_std", "seeds_done",
                "cost_ms_per_query"):  # fmt: skip
        assert col in frame.columns, col
    assert (frame["seeds_done"] == 2).all() and (frame["status"] == "ok").all()

    def ranks(rel):
        return {s: QueryRanks.load(out / rel / f"seed_{s}" / "ranks.npz") for s in (0, 1)}

    b = spec.bootstrap
    row = frame.loc[("head", "transformer", "hard")]
    direct = paired_bootstrap(ranks("final/hard/head-transformer"), ranks("final/hard"), "rsum",
                              resamples=b.resamples, confidence=b.confidence, seed=b.seed)  # fmt: skip
    assert (row["base_d_rsum"], row["base_d_rsum_low"], row["base_d_rsum_high"]) == pytest.approx(
        (direct.estimate, direct.low, direct.high))  # fmt: skip
    # the estimate by hand: mean RSUM over the seeds at the level minus at the base
    by_hand = np.mean([json.loads((out / f"final/hard/head-transformer/seed_{s}/results.json").read_text())
                       ["metrics"]["rsum"] - json.loads((out / f"final/hard/seed_{s}/results.json").read_text())
                       ["metrics"]["rsum"] for s in (0, 1)])  # fmt: skip
    assert row["base_d_rsum"] == pytest.approx(by_hand)
    versus = paired_bootstrap(ranks("final/hard/head-transformer"), ranks("final/global/head-transformer"), "rsum",
                              resamples=b.resamples, confidence=b.confidence, seed=b.seed)  # fmt: skip
    assert (row["ref_d_rsum"], row["ref_d_rsum_low"]) == pytest.approx((versus.estimate, versus.low))
    assert frame.loc[("loss", "own", "global"), "base_d_rsum_note"] == "= base"  # shared, not rerun
    assert (
        frame.loc[("loss", "own", "mean_max"), "rsum_mean"] == frame.loc[("loss", "infonce", "mean_max"), "rsum_mean"]
    )
    assert frame.loc[("head", "linear", "hard"), "base_d_rsum_note"] == "base"
    assert frame.loc[("head", "linear", "global"), "verdict"] == "(reference)"
    assert math.isnan(frame.loc[("head", "linear", "global"), "ref_d_rsum"])

    md = report.ablation.md.read_text()
    assert "### Factor head" in md and "ΔRSUM vs base" in md and "ΔRSUM vs global" in md
    tex = report.ablation.tex.read_text()
    assert "\\toprule" in tex and "$\\Delta$RSUM vs base" in tex
    assert pd.read_csv(report.ablation.csv).shape[0] == 10
    assert report.ablation.forest is not None and report.ablation.forest.stat().st_size > 0
    assert "## Ablation" in report.markdown


def test_a_factor_without_the_reference_has_no_comparison_to_it(ablation):
    spec, extra, out, storage, objective, _ = ablation
    head = dataclasses.replace(spec.factor("head"), methods=("hard",))
    spec = dataclasses.replace(spec, factors=(head,), methods=spec.methods[::2])  # global, hard
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=objective, progress=False)
    frame = write_protocol_report(out, storage).ablation.frame.set_index(["level", "method"])
    assert frame.loc[("transformer", "hard"), "ref_d_rsum_note"] == "global does not run head"
    assert frame.loc[("transformer", "hard"), "verdict"] == "n/a"
    assert math.isfinite(frame.loc[("transformer", "hard"), "base_d_rsum_low"])


def test_verdicts_say_where_the_comparison_with_the_reference_changes():
    assert [side(1.0, 5.0), side(-5.0, -1.0), side(-1.0, 2.0), side(math.nan, math.nan)] == [
        "ahead", "behind", "tie", "n/a"]  # fmt: skip
    rows = [  # (level, method, CI of the difference to the reference "r")
        ("base", "r", math.nan, math.nan), ("base", "a", -9.0, -2.0), ("base", "b", 1.0, 3.0),
        ("big", "r", math.nan, math.nan), ("big", "a", -4.0, 1.0), ("big", "b", 2.0, 6.0),
    ]  # fmt: skip
    frame = pd.DataFrame([{"factor": "f", "level": lv, "method": m, "base_level": lv == "base",
                           "ref_d_rsum_low": lo, "ref_d_rsum_high": hi} for lv, m, lo, hi in rows])  # fmt: skip
    assert _verdicts(frame, "r") == ["(reference)", "behind", "ahead", "(reference)", "behind → tie", "ahead"]


def test_a_failing_level_is_reported_the_rest_runs_and_the_next_run_retries_it(ablation, monkeypatch):
    spec, extra, out, storage, objective, calls = ablation
    monkeypatch.setenv("FINEALIGN_TEST_FAIL", "encoder.vision.head=transformer")
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=objective, progress=False)
    frame = write_protocol_report(out, storage).ablation.frame.set_index(["factor", "level", "method"])
    failed = frame.loc[("head", "transformer", "hard")]
    assert failed["seeds_done"] == 0 and "simulated failure" in failed["status"]
    assert frame.loc[("loss", "own", "hard"), "seeds_done"] == 2

    # the failed runs are tried again by the next run (not in a loop by the same one), and only they
    monkeypatch.delenv("FINEALIGN_TEST_FAIL")
    calls.clear()
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=objective, progress=False)
    assert len(finals_run(calls)) == 4 and all("head-transformer" in r for r in finals_run(calls))
    frame = write_protocol_report(out, storage).ablation.frame.set_index(["factor", "level", "method"])
    assert frame.loc[("head", "transformer", "hard"), "seeds_done"] == 2


def test_a_protocol_json_from_before_factors_resumes_or_names_what_differs(tmp_path):
    from finealign.protocol.run import SPEC_FILE, _check_same_protocol, spec_record

    spec = ProtocolSpec.from_dict({"study": "p", "methods": METHODS, "tune": {"n_trials": 8}})
    old = spec_record(spec)
    del old["factors"], old["tune"]["n_startup_trials"]  # what an older finealign wrote
    (tmp_path / SPEC_FILE).write_text(json.dumps({"spec": old, "overrides": []}))
    with pytest.raises(ConfigError, match=r"differs in spec.tune.n_startup_trials"):
        _check_same_protocol(tmp_path, spec, ())  # then TPE started with 8 // 4 = 2 random trials
    _check_same_protocol(tmp_path, dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, n_startup_trials=2)),
                         ())  # fmt: skip


def test_factors_may_grow_but_not_change():
    from finealign.protocol.growth import growth_problems

    level = lambda name, o=(): {"name": name, "overrides": {"default": list(o)}}  # noqa: E731
    factor = lambda levels, methods=(), retune=False: {  # noqa: E731
        "name": "head",
        "levels": levels,
        "retune": retune,
        "methods": list(methods),
    }
    base = {
        "study": "s",
        "methods": [{"name": "global"}],
        "factors": [factor([level("mlp"), level("tf", ["x=1"])], ["global"])],
    }
    grown = {**base, "methods": [{"name": "global"}, {"name": "hard"}],
             "factors": [factor([level("mlp"), level("tf", ["x=1"]), level("new", ["x=2"])], ["global", "hard"]),
                         factor([level("a"), level("b", ["y=1"])]) | {"name": "other"}]}  # fmt: skip
    assert growth_problems(base, grown) == []
    changed_level = {**base, "factors": [factor([level("mlp"), level("tf", ["x=2"])], ["global"])]}
    assert growth_problems(base, changed_level) == [
        "spec.factors.head.levels (only new levels at the end may be added)"
    ]
    fewer = {**base, "factors": [factor([level("mlp"), level("tf", ["x=1"])], ["hard"])]}
    assert "methods may be added" in growth_problems(base, fewer)[0]
    assert growth_problems(base, {**base, "factors": []}) == ["spec.factors.head (removed)"]
    assert growth_problems(base, {**base, "study": "t"}) == ["spec.study"]

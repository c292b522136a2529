"""The protocol end to end on toy data (seconds): equal budgets, paired seeds, test never read while
tuning, resume without repeats, a failing method kept with its reason, the report's files."""

import dataclasses
import json

import optuna
import pytest

from finealign.config import compose, validate
from finealign.data.toy import ToyDataset
from finealign.engine.batching import epoch_pairs
from finealign.engine.experiment import seed_everything
from finealign.engine.model import build_model
from finealign.errors import ConfigError
from finealign.protocol.loader import load_protocol
from finealign.protocol.outputs import write_protocol_report
from finealign.protocol.run import default_storage, run_protocol
from finealign.protocol.spec import MethodSpec, ProtocolSpec
from finealign.sweeps.objective import run_composed


@pytest.fixture
def protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, extra = load_protocol(["protocol=toy", "device=cpu"])
    broken = MethodSpec("broken", ("aligner=hard", "aligner.pooling=bogus"), ())
    return dataclasses.replace(spec, methods=(*spec.methods, broken)), extra


def test_protocol_end_to_end(protocol, tmp_path, monkeypatch):
    spec, extra = protocol
    reads, calls = [], []
    phase = {"now": None}
    original_split = ToyDataset.split

    def spying_split(self, name):
        reads.append((phase["now"], name))
        return original_split(self, name)

    def objective(overrides, report):
        calls.append(list(overrides))
        phase["now"] = "tune" if "eval.split=val" in overrides else "final"
        return run_composed(overrides, report)

    monkeypatch.setattr(ToyDataset, "split", spying_split)
    out, storage = tmp_path / "bench", default_storage(spec.study, tmp_path)
    outcomes = run_protocol(spec, extra, storage=storage, out_dir=out, objective=objective, progress=False)

    # equal budget: every method got the same number of tuning trials
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    for method in spec.methods:
        assert studies[f"{spec.study}-{method.name}"].n_trials == spec.tune.n_trials
    # test data is never read while tuning, and is read by the final runs
    assert ("tune", "val") in reads and ("tune", "test") not in reads and ("final", "test") in reads
    # paired seeds: every tuning trial of every method used tune.seed; every method's finals use `seeds`
    for method in ("global", "mean_max", "hard"):
        study = optuna.load_study(study_name=f"{spec.study}-{method}", storage=storage)
        assert {t.user_attrs["seed"] for t in study.trials} == {spec.tune.seed}
        assert all("provenance" in t.user_attrs and t.user_attrs["rsum"] == t.value for t in study.trials)
        for seed in spec.seeds:
            result = json.loads((out / "final" / method / f"seed_{seed}" / "results.json").read_text())
            assert result["labels"]["seed"] == seed and result["config"]["eval"]["split"] == "test"
            assert (out / "final" / method / f"seed_{seed}" / "ranks.npz").is_file()
    # the failing method stays, with its reason
    broken = next(o for o in outcomes if o.name == "broken")
    assert broken.tune.best_params is None and "pooling" in broken.failure

    report = write_protocol_report(out, storage)
    frame = report.frame.set_index("method")
    assert list(frame.index) == ["global", "mean_max", "hard", "broken"]
    assert frame.loc["global", "d_rsum_note"] == "reference" and frame.loc["global", "status"] == "ok"
    mean_max, hard = frame.loc["mean_max"], frame.loc["hard"]
    assert mean_max["seeds_done"] == 2 and mean_max["d_rsum_low"] <= mean_max["d_rsum"] <= mean_max["d_rsum_high"]
    assert hard["cost_repeats"] == 5 and hard["cost_ms_per_query_q25"] <= hard["cost_ms_per_query_q75"]
    # the cost as users meet it: one-off preparation, one query, a batch (profiling.scoring_cost)
    assert hard["cost_latency_ms_q25"] <= hard["cost_latency_ms"] <= hard["cost_latency_ms_q75"]
    assert hard["cost_prepare_ms"] > 0 and hard["cost_latency_vs_floor"] > 0 and hard["cost_queries_per_s"] > 0
    assert "1-query ms [IQR]" in report.md.read_text()
    assert "pooling" in frame.loc["broken", "status"] and "broken" in report.md.read_text()
    tex = report.tex.read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "mean\\_max" in tex
    assert report.plot is not None and report.plot.stat().st_size > 0

    # resume: the same command again repeats nothing that finished
    calls.clear()
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=objective, progress=False)
    assert calls == []  # the broken method's failed trials count against its budget too


def test_a_protocol_may_grow_but_not_change_in_the_same_directory(protocol, tmp_path):
    spec, extra = protocol
    out, storage = tmp_path / "bench", default_storage(spec.study, tmp_path)
    calls = []
    fake = lambda overrides, report: calls.append(overrides) or {"rsum": 1.0}  # noqa: E731
    first = dataclasses.replace(spec, methods=spec.methods[:1])
    run_protocol(first, extra, storage=storage, out_dir=out, objective=fake, progress=False)
    done = len(calls)
    # more methods: the first method's tuning is kept, the new ones are tuned (the fake writes no
    # results.json, so every final runs again; tests above show finished finals are kept)
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=fake, progress=False)
    tuned = [" ".join(c) for c in calls[done:] if "eval.split=val" in c]
    assert tuned and not any(f"aligner={spec.methods[0].name}" in c for c in tuned)
    record = json.loads((out / "protocol.json").read_text())
    assert len(record["spec"]["methods"]) == len(spec.methods) and len(record["earlier"]) == 1
    # what earlier work depends on may not change: the budget, a method's definition, a removal
    for changed, what in (
        (dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, n_trials=spec.tune.n_trials + 1)), "n_trials"),
        (
            dataclasses.replace(
                spec, methods=(dataclasses.replace(spec.methods[0], overrides=("aligner=hard",)), *spec.methods[1:])
            ),
            "overrides",
        ),  # fmt: skip
        (dataclasses.replace(spec, methods=spec.methods[1:]), "removed"),
    ):
        with pytest.raises(ConfigError, match=f"another spec.*{what}"):
            run_protocol(changed, extra, storage=storage, out_dir=out, objective=fake, progress=False)


def test_same_seed_same_initialisation_and_batch_order_across_aligners(tmp_path):
    states, meta = [], ToyDataset().split("train").meta
    for aligner in ("global", "mean_max", "hard"):
        spec = validate(compose(overrides=["data=toy", "encoder=toy", f"aligner={aligner}", "seed=7",
                                           f"output_dir={tmp_path}"]))  # fmt: skip
        seed_everything(spec.seed)
        model = build_model(spec, meta)
        states.append({k: v for k, v in model.state_dict().items() if not k.startswith("aligner.")})
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert all((other[k] == states[0][k]).all() for k in states[0])
    split = ToyDataset().split("train")
    assert (epoch_pairs(split, "captions", 7, 0) == epoch_pairs(split, "captions", 7, 0)).all()
    assert not (epoch_pairs(split, "captions", 7, 0) == epoch_pairs(split, "captions", 8, 0)).all()


@pytest.mark.parametrize("raw,match", [
    ({"methods": {}}, "methods is empty"),
    ({"methods": {"g": {"overrides": ["aligner=global"]}}, "reference": "x"}, "reference 'x'"),
    ({"methods": {"g": {"overrides": ["aligner=global", "seed=3"]}}}, "protocol sets itself"),
    ({"methods": {"g": {"overrides": ["aligner=global"], "params": {"train.lr": [0.1]}}},
      "shared": {"train.lr": [0.1, 0.2]}}, "shared params"),
    ({"methods": {"g": {"overrides": ["aligner=global"]}}, "seeds": [1, 1]}, "duplicates"),
    ({"methods": {"g": {"overrides": ["aligner=global"]}}, "tune": {"sampler": "grid"}}, "tune.sampler"),
    ({"methods": {"g": {"overrides": ["aligner=global"]}}, "bootstrap": {"confidence": 1.5}}, "confidence"),
    ({"methods": {"g": {"overrides": ["aligner=global"]}}, "tunes": {}}, "did you mean 'tune'"),
])  # fmt: skip
def test_bad_protocol_files_are_named(raw, match):
    with pytest.raises(ConfigError, match=match):
        ProtocolSpec.from_dict({"study": "p", **raw})


def test_seed_count_shorthand():
    spec = ProtocolSpec.from_dict({"study": "p", "methods": {"g": {"overrides": ["aligner=global"]}}, "seeds": 3})
    assert spec.seeds == (0, 1, 2) and spec.reference == "g"


def test_a_parameter_the_config_lacks_is_refused_before_any_trial(tmp_path, monkeypatch):
    from finealign.protocol.loader import check_methods_compose
    from finealign.sweeps.spec_parts import ParamSpec

    monkeypatch.chdir(tmp_path)
    spec, extra = load_protocol(["protocol=toy"])
    typo = MethodSpec(
        "typo", ("aligner=mean_max",), (ParamSpec("aligner.wieght_head", "categorical", values=("mlp",)),)
    )
    with pytest.raises(ConfigError, match="method 'typo'"):
        check_methods_compose(dataclasses.replace(spec, methods=(typo,)), extra)


def test_bench_and_report_commands_with_one_seed_say_ci_na(tmp_path, monkeypatch, capsys):
    from finealign.cli.main import main as cli_main

    monkeypatch.chdir(tmp_path)
    out, storage = tmp_path / "p", f"sqlite:///{tmp_path / 'p.db'}"
    args = ["--out", str(out), "--storage", storage]
    code = cli_main(["bench", "protocol=toy", "protocol.tune.n_trials=1", "protocol.seeds=1", "device=cpu",
                     "--methods", "global,mean_max", "--no-progress", *args])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "(CI n/a)" in printed and "(reference)" in printed and "not tuned yet" in printed  # hard: not run
    assert cli_main(["report", "toy_protocol", *args]) == 0
    again = capsys.readouterr().out
    assert again.split("\n\n")[0] == printed.split("\n\n")[0]  # the same table, rebuilt from storage


@pytest.mark.parametrize("name", ["toy", "toy_ablation", "flickr8k", "flickr8k_presets"])
def test_every_shipped_protocol_composes_every_method(name):
    spec, _ = load_protocol([f"protocol={name}"])  # composes and validates each method once
    assert spec.reference in {m.name for m in spec.methods}

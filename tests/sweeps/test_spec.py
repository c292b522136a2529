"""Sweep files are validated before any trial runs: bad keys and bad ranges raise ConfigError."""

from __future__ import annotations

import copy

import pytest

from finealign.errors import ConfigError
from finealign.sweeps import load_sweep
from finealign.sweeps.loader import merge_overrides, split_overrides
from finealign.sweeps.spec import SweepSpec

BASE = {
    "study": "s",
    "sampler": "grid",
    "objectives": [{"metric": "rsum", "direction": "maximize"}],
    "choose": {"aligner": {"hard": {"aligner.temperature": {"low": 0.05, "high": 0.5, "log": True, "grid": [0.1]}}}},
    "params": {"train.lr": {"values": [0.001, 0.01]}},
}


def spec_with(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return SweepSpec.from_dict(raw)


def test_valid_spec_parses_every_field():
    spec = spec_with(pruner={"name": "median", "n_startup_trials": 1})
    assert spec.choices["aligner"]["hard"][0].kind == "float"
    assert spec.choices["aligner"]["hard"][0].log is True
    assert spec.params[0].kind == "categorical" and spec.params[0].values == (0.001, 0.01)
    assert spec.pruner.name == "median" and spec.pruner.n_startup_trials == 1
    assert spec.plot_y == "rsum" and not spec.multi_objective


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"samplr": "tpe"}, "did you mean 'sampler'"),
        ({"sampler": "cmaes"}, "sampler must be one of"),
        ({"objectives": []}, "objectives is empty"),
        ({"objectives": [{"metric": "rsum", "direction": "up"}]}, "one of maximize, minimize"),
        ({"params": {"train.lr": {"low": 0.1, "high": 0.01}}}, "must not exceed high"),
        ({"params": {"train.lr": {"low": 0.0, "high": 0.1, "log": True, "grid": [0.1]}}}, "log range needs low > 0"),
        ({"params": {"train.lr": {"low": 0.001, "high": 0.1, "grid": [0.5]}}}, "not a number in"),
        ({"params": {"train.lr": {"low": 0.001, "high": 0.1}}}, "grid mode needs the values"),
        ({"params": {"train.lr": {"low": 0.001, "hihg": 0.1}}}, "no key 'hihg'"),
        ({"params": {"train.lr": {"values": []}}}, "values is empty"),
        ({"params": {"train.epochs": {"low": 1, "high": 5, "step": 0.5}}}, "int range needs int"),
        ({"params": {"aligner": {"values": [1]}}}, "name of a swept component group"),
        ({"overrides": ["aligner=hard"]}, "which the sweep varies"),
        ({"sampler": "tpe"}, "needs n_trials"),
        ({"n_trials": 0}, "positive int"),
        ({"study": "a/b"}, "without slashes"),
        (
            {
                "objectives": [{"metric": "rsum"}, {"metric": "score_latency_ms", "direction": "minimize"}],
                "pruner": "median",
            },
            "prunes single-objective studies only",
        ),
        (
            {"choose": {"aligner": {"hard": {"x": {"values": [1, 2]}}, "global": {"x": {"values": [1]}}}}},
            "declared twice",
        ),
    ],
)
def test_bad_specs_raise_config_error_naming_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        spec_with(**changes)


def test_split_and_merge_overrides():
    name, sweep_ov, trial_ov = split_overrides(["sweep=toy", "sweep.sampler=tpe", "data=toy", "train.lr=0.1"])
    assert (name, sweep_ov, trial_ov) == ("toy", ["sweep.sampler=tpe"], ["data=toy", "train.lr=0.1"])
    assert merge_overrides(["data=toy", "train.epochs=1"], ["train.epochs=3"]) == ("data=toy", "train.epochs=3")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        split_overrides(["toy"])


def test_shipped_sweep_files_load_and_unknown_options_are_rejected():
    for name in ("default", "toy", "aligners_grid"):
        loaded = load_sweep([f"sweep={name}"])
        assert loaded.spec.objectives[0].metric == "rsum"
    assert load_sweep(["sweep=toy", "sweep.sampler=random", "sweep.n_trials=4"]).spec.n_trials == 4
    with pytest.raises(ConfigError, match="no sweep config 'nope'"):
        load_sweep(["sweep=nope"])
    with pytest.raises(ConfigError, match="no option 'hardd'"):
        load_sweep(["sweep=toy", "+sweep.choose.aligner.hardd={}"])
    with pytest.raises(ConfigError, match="which sweep 'toy' varies"):
        load_sweep(["sweep=toy", "aligner=hard"])

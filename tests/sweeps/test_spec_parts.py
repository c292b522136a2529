"""The spec-file parts that sweep and protocol files share: one parser, one set of messages."""

import pytest

from finealign.errors import ConfigError
from finealign.protocol.spec import ProtocolSpec
from finealign.sweeps.spec import SweepSpec
from finealign.sweeps.spec_parts import (
    ParamSpec,
    check_objective,
    override_key,
    params_from_record,
    parse_overrides,
    parse_params,
)


def test_params_parse_ranges_and_choices_and_round_trip_through_their_record():
    from dataclasses import asdict

    params = parse_params(
        {
            "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "aligner.k": {"low": 1, "high": 8, "grid": [1, 4]},
            "loss": ["infonce", "triplet"],
        },  # fmt: skip
        "params",
    )
    lr, k, loss = params
    assert (lr.kind, lr.log, k.kind, k.grid_values(), loss.kind, loss.values) == (
        "float", True, "int", (1, 4), "categorical", ("infonce", "triplet"),
    )  # fmt: skip
    assert params_from_record([asdict(p) for p in params]) == params
    assert parse_params(None, "params") == ()


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"x": {"low": 1, "hihg": 2}}, r"param 'x' has no key 'hihg'; did you mean 'high'\?"),
        ({"x": {"low": True, "high": 2}}, r"param 'x': low must be a finite number, got True"),
        ({"x": {"low": 1e-3, "high": 1.0, "log": "yes"}}, r"param 'x': log must be true or false"),
        ({"x": {"low": 2, "high": 1}}, r"low \(2\) must not exceed high \(1\)"),
        (
            {"x": {"low": 1, "high": 2, "type": "flaot"}},
            r"type must be one of int, float, got 'flaot'\. Did you mean 'float'",
        ),
        ({"x": {"values": []}}, r"values is empty"),
        (["x"], r"params must map override keys"),
        ({"seed": [1, 2]}, r"params: 'seed' cannot be searched \(set here\)"),
    ],
)
def test_bad_params_name_the_key_and_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(raw, "params", reserved=("seed",), why=" (set here)")


def test_overrides_and_objective():
    assert parse_overrides(["aligner=hard", "+train.x=1"], "overrides") == ("aligner=hard", "+train.x=1")
    assert parse_overrides(None, "overrides") == ()
    assert [override_key(o) for o in ("aligner=hard", "+train.x=1", "~foo", "++a.b=2")] == [
        "aligner",
        "train.x",
        "foo",
        "a.b",
    ]
    for raw, message in (
        ("aligner=hard", "must be a list"),
        (["aligner"], "must hold strings like"),
        ([3], "must hold"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_overrides(raw, "overrides")
    with pytest.raises(ConfigError, match=r"overrides sets 'seed', mine"):
        parse_overrides(["seed=3"], "overrides", reserved=("seed",), why=", mine")
    check_objective(None)
    check_objective("pkg.mod:fn")
    with pytest.raises(ConfigError, match="objective must be 'module:function' or null"):
        check_objective("pkg.mod.fn")


def test_sweep_and_protocol_files_give_the_same_message_for_the_same_mistake():
    """A bare string where a list of overrides belongs was iterated letter by letter by the sweep
    parser before the two shared one."""
    bad_param = {"x": {"low": 1, "high": 2, "log": "no"}}
    sweep = {"study": "s", "sampler": "random", "n_trials": 2, "objectives": ["rsum"]}
    protocol = {"study": "p", "methods": {"g": {"overrides": ["aligner=global"]}}}
    messages = []
    for parse, raw in ((SweepSpec.from_dict, {**sweep, "params": bad_param}),
                       (ProtocolSpec.from_dict, {**protocol, "shared": bad_param})):  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            parse(raw)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "param 'x': log must be true or false, got 'no'"
    with pytest.raises(ConfigError, match="overrides must be a list of KEY=VALUE strings"):
        SweepSpec.from_dict({**sweep, "overrides": "data=toy"})
    with pytest.raises(ConfigError, match="overrides must be a list of KEY=VALUE strings"):
        ProtocolSpec.from_dict({**protocol, "overrides": "data=toy"})
    assert isinstance(SweepSpec.from_dict({**sweep, "params": {"x": [1, 2]}}).params[0], ParamSpec)

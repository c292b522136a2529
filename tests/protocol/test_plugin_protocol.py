"""A plugin's config folder (entry point group `finealign.configs`) can ship a protocol and a
method preset: both are found through `config.group_options`, like every other config group."""

import textwrap

import pytest

import finealign.config as config
from finealign.errors import ConfigError, UnknownNameError

PROTOCOL = """\
study: plugged_protocol
overrides: [data=toy, encoder=toy, train=quick, data.num_train=16, data.num_val=8, data.num_test=8]
tune: {sampler: random, n_trials: 1}
shared:
  train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}
methods:
  clip: {overrides: [method=plugged_clip]}
seeds: 1
"""
PRESET = """\
# @package _global_
defaults:
  - override /aligner: global
  - override /loss: infonce
method:
  name: plugged_clip
  fixed: {aligner.name: global, loss.name: infonce}
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An importable package `plugged_configs` with protocol/ and method/ folders, declared as a
    plugin config package (what its distribution's entry point would say)."""
    package = tmp_path / "plugged_configs"
    for folder, name, text in (("protocol", "plugged", PROTOCOL), ("method", "plugged_clip", PRESET)):
        (package / folder).mkdir(parents=True)
        (package / folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config, "plugin_config_packages", lambda: ["plugged_configs"])
    return package


def test_a_plugin_ships_a_protocol_and_a_method_preset(plugin):
    from finealign.protocol.loader import available_protocols, load_protocol

    assert "plugged" in available_protocols() and "toy" in available_protocols()
    assert "plugged_clip" in config.method_presets()
    config.check_method_overrides(["method=plugged_clip"])  # no UnknownNameError
    spec, extra = load_protocol(["protocol=plugged", "protocol.tune.n_trials=2", "device=cpu"])
    assert (spec.study, spec.tune.n_trials, spec.method("clip").overrides, extra) == (
        "plugged_protocol", 2, ("method=plugged_clip",), ("device=cpu",),
    )  # fmt: skip
    assert config.validate(config.compose(overrides=["method=plugged_clip", "data=toy"])).method == "plugged_clip"


def test_an_unknown_protocol_or_preset_names_its_close_matches(plugin):
    from finealign.protocol.loader import load_protocol

    with pytest.raises(ConfigError, match=r"no protocol config 'pluged'.*Did you mean 'plugged'"):
        load_protocol(["protocol=pluged"])
    with pytest.raises(UnknownNameError, match=r"Did you mean 'plugged_clip'"):
        config.check_method_overrides(["method=plugged_clpi"])

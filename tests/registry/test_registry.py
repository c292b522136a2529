from dataclasses import dataclass

import pytest

from finealign.errors import ConfigError, PluginError, UnknownNameError
from finealign.registry import Registry, create_aligner, list_aligners


def make_registry():
    reg = Registry("widgets")
    reg.scan_plugins()  # the test group has no entry points; mark as scanned

    @reg.register("alpha")
    class Alpha:
        """First widget."""

        @dataclass
        class Config:
            size: int = 1

            def __post_init__(self):
                if self.size < 1:
                    raise ConfigError(f"size must be >= 1, got {self.size}")

        def __init__(self, config):
            self.config = config

    @reg.register("alphabet")
    def alphabet(letters: str = "abc"):
        """A factory without a Config."""
        return letters.upper()

    @reg.register("beta_small")
    class BetaSmall:
        """Third."""

    return reg, Alpha


def test_register_build_and_describe():
    reg, alpha = make_registry()
    widget = reg.build("alpha", size=3)
    assert isinstance(widget, alpha) and widget.config.size == 3
    assert reg.build("alphabet", letters="xy") == "XY"
    assert reg.describe("alpha") == "First widget."


def test_duplicate_registration_is_an_error():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match="already registered"):
        reg.add("alpha", object())
    reg.add("alpha", int, override=True)
    assert reg.get("alpha") is int


def test_glob_listing():
    reg, _ = make_registry()
    assert reg.list() == ["alpha", "alphabet", "beta_small"]
    assert reg.list("alpha*") == ["alpha", "alphabet"]
    assert reg.list("*_small") == ["beta_small"]
    assert reg.list("gamma*") == []


def test_unknown_name_suggests_close_matches():
    reg, _ = make_registry()
    with pytest.raises(UnknownNameError) as info:
        reg.build("alpah")
    message = str(info.value)
    assert "'alpah'" in message and "Did you mean 'alpha'" in message


def test_unknown_option_and_bad_value_are_config_errors():
    reg, _ = make_registry()
    with pytest.raises(ConfigError, match="no option 'sise'.*did you mean 'size'"):
        reg.build("alpha", sise=2)
    with pytest.raises(ConfigError, match="size must be >= 1"):
        reg.build("alpha", size=0)
    with pytest.raises(ConfigError, match="alpha"):
        reg.build("alpha", size=1, extra=2)


def test_builtin_aligner_lookup_suggests():
    assert "mean_max" in list_aligners()
    assert list_aligners("mean_*") == [n for n in list_aligners() if n.startswith("mean_")]
    with pytest.raises(UnknownNameError, match="mean_max"):
        create_aligner("meanmax")


def test_broken_plugin_says_what_to_install():
    reg = Registry("widgets")
    reg._plugins_scanned = True
    from finealign.registry.core import Entry

    reg._entries["ghost"] = Entry(name="ghost", ref="no_such_module_xyz:Thing", distribution="ghost-pkg")
    with pytest.raises(PluginError, match="pip install ghost-pkg"):
        reg.get("ghost")

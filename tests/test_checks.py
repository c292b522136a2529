"""The shared config-value checks: one rule and one message shape everywhere."""

import math

import pytest

from finealign.checks import (
    check_bool,
    check_choice,
    check_int,
    check_known_keys,
    check_number,
    check_positive_int,
    check_text,
    did_you_mean,
)
from finealign.errors import ConfigError


def test_ints_refuse_bools_floats_and_values_below_the_bound():
    check_positive_int("k", 3)
    check_int("n", 0, low=0)
    check_positive_int("k", None, optional=True)
    for bad in (0, -1, True, 2.0, "3", None):
        with pytest.raises(ConfigError, match=r"^k must be a positive int, got "):
            check_positive_int("k", bad)
    with pytest.raises(ConfigError, match=r"^n must be a non-negative int or null, got -1$"):
        check_int("n", -1, low=0, optional=True)
    with pytest.raises(ConfigError, match=r"^size must be an int >= 32 \(pixels\), got 16$"):
        check_int("size", 16, low=32, note=" (pixels)")


def test_numbers_are_finite_and_bounded():
    check_number("lr", 1e-3, low=0, strict=True)
    check_number("w", 0.0, low=0)
    for bad in (0.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ConfigError, match=r"^lr must be a finite number > 0, got "):
            check_number("lr", bad, low=0, strict=True)
    check_bool("flag", False)
    with pytest.raises(ConfigError, match="flag must be true or false, got 'no'"):
        check_bool("flag", "no")
    with pytest.raises(ConfigError, match="mode must be one of a, b, got 'c'"):
        check_choice("mode", "c", ("a", "b"))


@pytest.mark.parametrize("option", ["chunk_visual", "chunk_text"])
def test_components_use_the_shared_rule(option):
    from finealign.registry import create_aligner

    with pytest.raises(ConfigError, match=f"{option} must be a positive int, got True"):
        create_aligner("mean_max", **{option: True})  # bool was accepted as 1 before the shared check


def test_ranges_name_their_bounds():
    check_number("p", 0.5, low=0, strict=True, high=1, high_strict=True)
    check_number("p", 1, low=0, strict=True, high=1)
    for bad in (0, 1, -0.1, math.nan, False):
        with pytest.raises(ConfigError, match=r"^p must be a finite number in \(0, 1\), got "):
            check_number("p", bad, low=0, strict=True, high=1, high_strict=True)
    with pytest.raises(ConfigError, match=r"^q must be a finite number <= 2 or null, got 3$"):
        check_number("q", 3, high=2, optional=True)


def test_choices_keys_and_names_offer_close_matches():
    with pytest.raises(ConfigError, match=r"^amp must be one of none, bf16, fp16, got 'bf61'\. Did you mean 'bf16'"):
        check_choice("amp", "bf61", ("none", "bf16", "fp16"))
    with pytest.raises(ConfigError, match=r"^flag must be one of 0, 1, got True$"):
        check_choice("flag", True, (0, 1))  # True == 1, but a bool is not the int choice
    with pytest.raises(ConfigError, match=r"^pruner has no key 'percentil'; did you mean 'percentile'\?"):
        check_known_keys({"percentil": 5}, ("name", "percentile"), "pruner")
    check_known_keys({"name": "x"}, ("name", "percentile"), "pruner")
    assert did_you_mean("tokenflwo", ["tokenflow", "hard"]) == " Did you mean 'tokenflow'?"
    assert did_you_mean("zzz", ["tokenflow", "hard"]) == ""
    check_text("study", "s")
    for bad in ("", None, 3):
        with pytest.raises(ConfigError, match=r"^study must be a non-empty string, got "):
            check_text("study", bad)

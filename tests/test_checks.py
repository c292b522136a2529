"""The shared config-value checks: one rule and one message shape everywhere."""

import math

import pytest

from finealign.checks import check_bool, check_choice, check_int, check_number, check_positive_int
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

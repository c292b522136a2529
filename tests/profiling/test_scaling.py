"""The log-log least-squares fit recovers known exponents; scaled shapes keep their ratios."""

from __future__ import annotations

import math
import random

import pytest

from finealign.errors import ConfigError
from finealign.profiling.inputs import ProblemShape
from finealign.profiling.scaling import fit_power_law, fit_rows, scaling_rows


def test_fit_recovers_an_exact_power_law():
    x = [10, 20, 40, 80, 160]
    fit = fit_power_law(x, [3.0 * v**1.98 for v in x])
    assert fit.exponent == pytest.approx(1.98, abs=1e-9)
    assert fit.prefactor == pytest.approx(3.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_recovers_exponent_under_noise_and_reports_lower_r2():
    rng = random.Random(0)
    x = [2**k for k in range(3, 12)]
    y = [0.5 * v**2 * math.exp(rng.gauss(0, 0.05)) for v in x]
    fit = fit_power_law(x, y)
    assert fit.exponent == pytest.approx(2.0, abs=0.05)
    assert 0.99 < fit.r2 < 1.0


def test_fit_rejects_bad_points():
    with pytest.raises(ConfigError, match="at least 2"):
        fit_power_law([1], [1])
    with pytest.raises(ConfigError, match="positive"):
        fit_power_law([1, 2], [0, 1])
    with pytest.raises(ConfigError, match="distinct"):
        fit_power_law([3, 3], [1, 2])


def test_scaled_shapes_keep_ratios():
    base = ProblemShape(nv=100, nt=500, lv=50, lt=32, dim=512)
    assert base.scaled("n", 10) == ProblemShape(10, 50, 50, 32, 512)
    assert base.scaled("tokens", 25) == ProblemShape(100, 500, 25, 16, 512)
    assert base.scaled("dim", 64).dim == 64
    with pytest.raises(ConfigError, match="scaling axis"):
        base.scaled("width", 3)


def test_scaling_rows_and_fits_on_a_synthetic_cost():
    # cost = nv * nt (quadratic in N when nt = 5 N): the fit over rows must say exponent 2
    def fake_profile(shape):
        return [{"aligner": "fake", "latency_ms": 1e-3 * shape.nv * shape.nt, "error": ""}]

    rows = scaling_rows(fake_profile, ProblemShape(nv=10, nt=50), "n", [10, 20, 40, 80])
    assert [r["x"] for r in rows] == [10, 20, 40, 80]
    (fit,) = fit_rows(rows)
    assert fit["exponent"] == pytest.approx(2.0, abs=1e-9) and fit["axis"] == "n"
    assert "N^2.00" in fit["summary"]

"""Training curves: positive vs hardest-negative score and embedding spread, per epoch."""

import math

import torch

from finealign.engine.curves import CURVE_KEYS, EpochCurves, batch_curves, spread


def test_spread_is_zero_for_one_point_and_known_for_orthonormal_rows():
    same = torch.tensor([[3.0, 4.0]]).repeat(5, 1)
    assert spread(same) < 1e-7
    eye = torch.eye(4)  # unit rows, centroid (1/4, ...): each row's distance is sqrt(3/4)
    assert math.isclose(spread(eye), math.sqrt(0.75), rel_tol=1e-6)
    assert math.isclose(spread(7.0 * eye), math.sqrt(0.75), rel_tol=1e-6)  # scale-free


def test_batch_curves_by_hand():
    sim = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.7]])
    positives = torch.tensor([[True, False, False], [False, True, True]])
    g = torch.eye(3)
    point = batch_curves(sim, positives, g[:2], g)
    assert math.isclose(point["positive_score"], (0.9 + 0.8 + 0.7) / 3, rel_tol=1e-6)
    # image 0's hardest negative 0.5, image 1's 0.1
    assert math.isclose(point["hardest_negative_score"], 0.3, rel_tol=1e-6)
    assert math.isclose(point["image_spread"], math.sqrt(0.5), rel_tol=1e-6)


def test_epoch_means_skip_missing_values():
    curves = EpochCurves()
    curves.add(dict.fromkeys(CURVE_KEYS, 1.0))
    curves.add({**dict.fromkeys(CURVE_KEYS, 3.0), "hardest_negative_score": float("nan")})
    means = curves.means()
    assert means["positive_score"] == 2.0
    assert means["hardest_negative_score"] == 1.0

import math

import pytest
import torch

from finealign.errors import ConfigError, ShapeError
from finealign.registry import create_loss
from tests.losses.reference import infonce_loop


def test_infonce_two_by_two_by_hand():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = create_loss("infonce", temperature=1.0, learnable=False)
    # Every row and column: -log(e / (e + 1)) = log(1 + e^-1).
    assert float(loss(sim, torch.eye(2, dtype=torch.bool))) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_infonce_multi_positive_by_hand():
    # Image 0 has captions 0 and 1, image 1 has caption 2.
    sim = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 2.0]])
    pos = torch.tensor([[True, True, False], [False, False, True]])
    z0 = math.exp(1.0) + math.exp(0.5) + 1.0
    z1 = 1.0 + 1.0 + math.exp(2.0)
    # image→text: row 0 averages its two positives, row 1 has one; then the mean over rows
    i2t = 0.5 * ((math.log(z0) - 1.0 + math.log(z0) - 0.5) / 2 + (math.log(z1) - 2.0))
    c0 = math.exp(1.0) + 1.0  # column 0: [1, 0]
    c1 = math.exp(0.5) + 1.0  # column 1: [0.5, 0]
    c2 = 1.0 + math.exp(2.0)  # column 2: [0, 2]
    t2i = ((math.log(c0) - 1.0) + (math.log(c1) - 0.5) + (math.log(c2) - 2.0)) / 3
    loss = create_loss("infonce", temperature=1.0, learnable=False)
    assert float(loss(sim, pos)) == pytest.approx(0.5 * (i2t + t2i), abs=1e-6)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_infonce_matches_loop_reference_random(temperature, gen):
    sim = torch.randn(6, 9, generator=gen)
    owner = torch.randint(0, 6, (9,), generator=gen)
    pos = torch.arange(6)[:, None] == owner[None, :]
    loss = create_loss("infonce", temperature=temperature, learnable=False)
    assert float(loss(sim, pos)) == pytest.approx(infonce_loop(sim, pos, 1 / temperature), rel=1e-5)


def test_infonce_learnable_temperature_gets_gradient_and_clamps():
    loss = create_loss("infonce", temperature=0.07, learnable=True, max_scale=100.0)
    sim = torch.randn(4, 4, requires_grad=True)
    out = loss(sim, torch.eye(4, dtype=torch.bool))
    out.backward()
    assert sim.grad is not None and sim.grad.abs().sum() > 0
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0
    with torch.no_grad():
        loss.log_scale.fill_(math.log(1000.0))  # beyond the clamp
    assert float(loss.scale().detach()) == pytest.approx(100.0)
    assert loss.temperature == pytest.approx(0.01)


def test_infonce_fixed_temperature_is_a_buffer():
    loss = create_loss("infonce", temperature=0.1, learnable=False)
    assert list(loss.parameters()) == []
    assert loss.temperature == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_infonce_rejects_bad_temperature(bad):
    with pytest.raises(ConfigError, match="temperature"):
        create_loss("infonce", temperature=bad)


def test_infonce_rejects_bad_inputs():
    loss = create_loss("infonce")
    with pytest.raises(ShapeError, match="positives"):
        loss(torch.randn(3, 3), torch.eye(3))  # not bool
    with pytest.raises(ShapeError, match="match"):
        loss(torch.randn(3, 3), torch.eye(2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="no True"):
        loss(torch.randn(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="NaN"):
        loss(torch.full((2, 2), float("nan")), torch.eye(2, dtype=torch.bool))


def test_infonce_lower_for_aligned_similarities(gen):
    pos = torch.eye(5, dtype=torch.bool)
    loss = create_loss("infonce", temperature=0.1, learnable=False)
    aligned = torch.where(pos, 0.9, 0.1)
    shuffled = aligned[torch.tensor([1, 2, 3, 4, 0])]
    assert float(loss(aligned, pos)) < float(loss(shuffled, pos))

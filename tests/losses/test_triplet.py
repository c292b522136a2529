import pytest
import torch

from finealign.errors import ConfigError
from finealign.registry import create_loss
from tests.losses.reference import hinge_loop


def test_triplet_two_by_two_by_hand():
    sim = torch.tensor([[0.5, 0.6], [0.4, 0.3]])
    pos = torch.eye(2, dtype=torch.bool)
    # pair (0,0): i2t [0.2-0.5+0.6]=0.3, t2i [0.2-0.5+0.4]=0.1 -> 0.4
    # pair (1,1): i2t [0.2-0.3+0.4]=0.3, t2i [0.2-0.3+0.6]=0.5 -> 0.8
    loss = create_loss("triplet", margin=0.2, warmup_epochs=0, reduction="sum")
    assert float(loss(sim, pos)) == pytest.approx(1.2, abs=1e-6)
    assert float(create_loss("triplet", margin=0.2, warmup_epochs=0)(sim, pos)) == pytest.approx(0.6, abs=1e-6)


def test_triplet_warmup_sums_then_takes_hardest():
    sim = torch.tensor([[0.5, 0.4, 0.45], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6]])
    pos = torch.eye(3, dtype=torch.bool)
    loss = create_loss("triplet", margin=0.2, warmup_epochs=1, reduction="sum")
    # Epoch 0 (warm-up), pair (0,0): i2t 0.1 + 0.15, t2i 0 + 0 -> 0.25; pair (1,1): i2t 0 + 0,
    # t2i [0.2-0.6+0.4]=0 + 0; pair (2,2): t2i [0.2-0.6+0.45]=0.05 -> total 0.30
    assert float(loss(sim, pos)) == pytest.approx(0.30, abs=1e-6)
    loss.set_epoch(1)  # hardest negative only: pair (0,0) keeps 0.15, pair (2,2) keeps 0.05
    assert float(loss(sim, pos)) == pytest.approx(0.20, abs=1e-6)
    summed = create_loss("triplet", margin=0.2, warmup_epochs=1, reduction="sum", negatives="sum")
    summed.set_epoch(5)  # VSE0: every negative in every epoch, the warm-up's value
    assert float(summed(sim, pos)) == pytest.approx(0.30, abs=1e-6)
    with pytest.raises(ConfigError, match="negatives must be"):
        create_loss("triplet", negatives="all")


@pytest.mark.parametrize("hardest", [False, True])
def test_triplet_matches_loop_reference_with_multiple_positives(hardest, gen):
    sim = torch.randn(5, 12, generator=gen) * 0.3
    owner = torch.randint(0, 5, (12,), generator=gen)
    pos = torch.arange(5)[:, None] == owner[None, :]
    loss = create_loss("triplet", margin=0.3, warmup_epochs=0 if hardest else 99)
    ref = hinge_loop(sim, pos, 0.3, hardest)
    assert float(loss(sim, pos)) == pytest.approx(sum(ref) / len(ref), rel=1e-5)


def test_triplet_other_captions_of_the_image_are_not_negatives():
    # Image 0 has captions 0 and 1; caption 1 scoring high must not be penalised.
    sim = torch.tensor([[0.5, 0.9, 0.0], [0.0, 0.0, 0.9]])
    pos = torch.tensor([[True, True, False], [False, False, True]])
    assert float(create_loss("triplet", margin=0.2, warmup_epochs=0)(sim, pos)) == pytest.approx(0.0)


def test_triplet_gradient_flows(gen):
    sim = (torch.randn(4, 4, generator=gen) * 0.1).requires_grad_(True)
    create_loss("triplet", warmup_epochs=0)(sim, torch.eye(4, dtype=torch.bool)).backward()
    assert sim.grad is not None and sim.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,key",
    [({"margin": -0.1}, "margin"), ({"warmup_epochs": -1}, "warmup_epochs"), ({"reduction": "max"}, "reduction")],
)
def test_triplet_rejects_bad_config(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        create_loss("triplet", **kwargs)

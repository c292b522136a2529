import pytest
import torch
import torch.nn.functional as F

from finealign.errors import ConfigError, ShapeError
from finealign.registry import create_loss
from tests.losses.reference import consistency_loop, hinge_loop


def _batch(gen, n_img=4, n_txt=7, dim=5):
    owner = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (n_txt - n_img,), generator=gen)])
    pos = torch.arange(n_img)[:, None] == owner[None, :]
    return (
        torch.randn(n_img, n_txt, generator=gen) * 0.3,
        pos,
        torch.randn(n_img, dim, generator=gen),
        torch.randn(n_txt, dim, generator=gen),
    )


@pytest.mark.parametrize("consistency,power", [("l2", 2), ("l1", 1)])
@pytest.mark.parametrize("hardest", [True, False])
def test_cmc_matches_loop_reference(consistency, power, hardest, gen):
    sim, pos, img, txt = _batch(gen)
    loss = create_loss(
        "cmc",
        margin=0.2,
        global_weight=0.7,
        local_weight=1.3,
        consistency_weight=0.5,
        consistency=consistency,
        hardest=hardest,
    )
    global_sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    local = hinge_loop(sim, pos, 0.2, hardest)
    glob = hinge_loop(global_sim, pos, 0.2, hardest)
    expected = (
        1.3 * sum(local) / len(local) + 0.7 * sum(glob) / len(glob) + 0.5 * consistency_loop(img, txt, pos, power)
    )
    got = loss(sim, pos, {"image_global": img, "text_global": txt})
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cmc_consistency_by_hand():
    # Two images at 90 degrees, one caption each; captions at 0 degrees: |1 - 0|^2 = 1 per pair.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    pos = torch.eye(2, dtype=torch.bool)
    loss = create_loss("cmc", global_weight=0.0, local_weight=0.0, consistency_weight=1.0)
    assert float(loss(torch.zeros(2, 2), pos, {"image_global": img, "text_global": txt})) == pytest.approx(1.0)


def test_cmc_uses_given_global_sim(gen):
    sim, pos, img, txt = _batch(gen)
    loss = create_loss("cmc", consistency_weight=0.0, local_weight=0.0)
    global_sim = torch.randn_like(sim)
    ref = hinge_loop(global_sim, pos, 0.2, True)
    assert float(loss(sim, pos, {"global_sim": global_sim})) == pytest.approx(sum(ref) / len(ref), rel=1e-5)


def test_cmc_gradients_reach_both_modalities(gen):
    sim, pos, img, txt = _batch(gen)
    sim.requires_grad_(True), img.requires_grad_(True), txt.requires_grad_(True)
    create_loss("cmc")(sim, pos, {"image_global": img, "text_global": txt}).backward()
    for t in (sim, img, txt):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_cmc_errors():
    loss = create_loss("cmc")
    pos = torch.eye(2, dtype=torch.bool)
    with pytest.raises(ShapeError, match="global"):
        loss(torch.zeros(2, 2), pos)
    both = torch.ones(2, 2, dtype=torch.bool)  # a caption with two images
    with pytest.raises(ShapeError, match="exactly one positive"):
        loss(torch.zeros(2, 2), both, {"image_global": torch.randn(2, 3), "text_global": torch.randn(2, 3)})
    with pytest.raises(ConfigError, match="consistency"):
        create_loss("cmc", consistency="l3")
    with pytest.raises(ConfigError, match="global_weight"):
        create_loss("cmc", global_weight=-1.0)

"""`share_loss`: the shares of a batch split among ranks (each: its images against every caption,
every image against its captions) add up to the loss on the whole matrix, value and gradients —
what distributed training with a local loss relies on (engine/distributed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finealign.errors import ShapeError
from finealign.losses.base import BatchShare
from finealign.registry import create_loss

CASES = [
    ("infonce", {}),
    ("infonce", {"learnable": False, "temperature": 0.2}),
    ("triplet", {"warmup_epochs": 0}),  # hardest negative
    ("triplet", {"negatives": "sum", "reduction": "sum"}),
    ("cmc", {"consistency_weight": 0.5}),
    ("cmc", {"consistency": "l1", "hardest": False, "reduction": "sum"}),
    ("cmc", {"consistency": "tgdt", "consistency_weight": 1.0, "reduction": "sum"}),
]


def batch(gen, n_img=6, n_txt=11, dim=5, orphan=False):
    """Scores, positives (one image per caption; with `orphan` an image without captions) and
    global vectors, as leaves that take gradients."""
    owners = n_img - 1 if orphan else n_img
    owner = torch.cat([torch.arange(owners), torch.randint(0, owners, (n_txt - owners,), generator=gen)])
    positives = torch.arange(n_img)[:, None] == owner[None, :]
    leaves = [torch.randn(n_img, n_txt, generator=gen) * 0.4, torch.randn(n_img, dim, generator=gen),
              torch.randn(n_txt, dim, generator=gen)]  # fmt: skip
    return [x.requires_grad_() for x in leaves], positives


def split(n: int, parts: int, gen) -> list[torch.Tensor]:
    """A random split of range(n) into `parts` non-empty groups of uneven sizes."""
    order = torch.randperm(n, generator=gen)
    cuts = sorted(torch.randperm(n - 1, generator=gen)[: parts - 1].add(1).tolist())
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


def grads(value, leaves, loss):
    params = [p for p in loss.parameters() if p.requires_grad]
    return torch.autograd.grad(value, [*leaves, *params], allow_unused=True)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_shares_of_a_split_batch_add_up_to_the_whole_loss_and_its_gradients(gen, name, options, parts):
    loss = create_loss(name, **options)
    loss.set_epoch(3)
    for trial in range(3):
        (sim, image_global, text_global), positives = batch(gen, orphan=name == "infonce" and trial == 1)
        extras = {"image_global": image_global, "text_global": text_global}
        whole = loss(sim, positives, extras)
        images, captions = split(sim.shape[0], parts, gen), split(sim.shape[1], parts, gen)
        shared = sum(
            loss.share_loss(BatchShare(sim[rows], sim[:, cols], rows, cols, positives, extras))
            for rows, cols in zip(images, captions, strict=True)
        )
        torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-6)
        for got, want in zip(grads(shared, [sim, image_global, text_global], loss),
                             grads(whole, [sim, image_global, text_global], loss), strict=True):  # fmt: skip
            if want is None:
                assert got is None or float(got.abs().max()) == 0.0
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert float(whole.detach()) > 0


def test_cmc_shares_read_a_given_global_similarity(gen):
    loss = create_loss("cmc", consistency_weight=0.0)
    (sim, image_global, text_global), positives = batch(gen)
    global_sim = (F.normalize(image_global, dim=-1) @ F.normalize(text_global, dim=-1).T).detach() * 0.5
    extras = {"global_sim": global_sim}
    rows, cols = torch.arange(6), torch.arange(11)
    halves = [(rows[:3], cols[:5]), (rows[3:], cols[5:])]
    shared = sum(loss.share_loss(BatchShare(sim[r], sim[:, c], r, c, positives, extras)) for r, c in halves)
    torch.testing.assert_close(shared, loss(sim, positives, extras))


def test_a_share_whose_blocks_do_not_fit_is_a_shape_error(gen):
    loss = create_loss("infonce")
    (sim, _, _), positives = batch(gen)
    rows, cols = torch.arange(2), torch.arange(3)
    with pytest.raises(ShapeError, match=r"share.t2i \(6, 4\) must be \(B_img, n_txt\) = \(6, 3\)"):
        loss.share_loss(BatchShare(sim[rows], sim[:, :4], rows, cols, positives))
    with pytest.raises(ShapeError, match="share.i2t"):
        loss.share_loss(BatchShare(sim[:3], sim[:, cols], rows, cols, positives))

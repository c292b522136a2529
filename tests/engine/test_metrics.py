import numpy as np
import pytest
import torch

from finealign.engine.metrics import fold_metrics, i2t_ranks, retrieval_metrics, t2i_ranks
from finealign.errors import ShapeError


def rank_loop_i2t(sim, caption_item):
    """Sort each image's captions best-first, wrong captions before right ones on ties
    (pessimistic); the rank is the 1-based position of the first right caption."""
    ranks = []
    for i, row in enumerate(sim.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], caption_item[j] == i))
        ranks.append(next(pos + 1 for pos, j in enumerate(order) if caption_item[j] == i))
    return ranks


def rank_loop_t2i(sim, caption_item):
    ranks = []
    columns = list(zip(*sim.tolist()))
    for j, col in enumerate(columns):
        order = sorted(range(len(col)), key=lambda i: (-col[i], i == caption_item[j]))
        ranks.append(order.index(int(caption_item[j])) + 1)
    return ranks


def test_ranks_hand_built_with_ties():
    # 2 images, 2 captions each: captions 0,1 → image 0; captions 2,3 → image 1.
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.95, 0.2],  # image 0: best own 0.9, beaten by caption 2 (0.95) → rank 2
            [0.5, 0.5, 0.5, 0.4],  # image 1: best own 0.5 ties with captions 0 and 1 → rank 3 (pessimistic)
        ]
    )
    owner = torch.tensor([0, 0, 1, 1])
    assert i2t_ranks(sim, owner).tolist() == [2, 3]
    # caption 0: 0.9 vs 0.5 → 1; caption 1: 0.1 vs 0.5 → 2; caption 2: 0.5 vs 0.95 → 2;
    # caption 3: 0.4 vs 0.2 → 1
    assert t2i_ranks(sim, owner).tolist() == [1, 2, 2, 1]
    m = retrieval_metrics(sim, owner)
    assert m["i2t_r1"] == 0.0 and m["i2t_r5"] == 100.0
    assert m["t2i_r1"] == 50.0 and m["t2i_medr"] == 1.5 and m["t2i_meanr"] == 1.5
    assert m["i2t_medr"] == 2.5 and m["i2t_meanr"] == 2.5
    assert m["rsum"] == pytest.approx(0 + 100 + 100 + 50 + 100 + 100)


def test_ties_among_own_captions_do_not_count():
    sim = torch.tensor([[0.7, 0.7, 0.1], [0.0, 0.0, 0.3]])
    owner = torch.tensor([0, 0, 1])
    assert i2t_ranks(sim, owner).tolist() == [1, 1]


def test_constant_scores_get_the_worst_rank():
    owner = torch.arange(4).repeat_interleave(5)
    m = retrieval_metrics(torch.zeros(4, 20), owner)
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 0.0
    assert m["i2t_meanr"] == 16.0  # 15 wrong captions tie with the best right one
    assert m["t2i_meanr"] == 4.0


def test_perfect_scores():
    owner = torch.arange(6).repeat_interleave(5)
    sim = (torch.arange(6)[:, None] == owner[None, :]).float()
    m = retrieval_metrics(sim, owner)
    assert m["rsum"] == 600.0 and m["i2t_medr"] == 1.0 and m["t2i_meanr"] == 1.0


@pytest.mark.parametrize("quantise", [False, True])
def test_ranks_match_loop_reference_5_captions_per_image(quantise, gen):
    n = 9
    owner = torch.arange(n).repeat_interleave(5)[torch.randperm(5 * n, generator=gen)]
    sim = torch.randn(n, 5 * n, generator=gen)
    if quantise:  # many ties
        sim = (sim * 2).round() / 2
    assert i2t_ranks(sim, owner, chunk=4).tolist() == rank_loop_i2t(sim, owner.tolist())
    assert t2i_ranks(sim, owner, chunk=7).tolist() == rank_loop_t2i(sim, owner.tolist())
    m = retrieval_metrics(sim, owner)
    ref = np.array(rank_loop_i2t(sim, owner.tolist()))
    assert m["i2t_r5"] == pytest.approx(100 * np.mean(ref <= 5))
    assert m["i2t_medr"] == pytest.approx(np.median(ref))


def test_coco_folds_average_per_fold_metrics(gen):
    folds, fold_size = 5, 3
    owner = torch.arange(folds * fold_size).repeat_interleave(5)
    sim = torch.randn(folds * fold_size, len(owner), generator=gen)
    got = fold_metrics(sim, owner, folds, fold_size)
    per_fold = []
    for f in range(folds):
        images = list(range(f * fold_size, (f + 1) * fold_size))
        cols = [j for j, o in enumerate(owner.tolist()) if o in images]
        sub = sim[images][:, cols]
        sub_owner = owner[cols] - f * fold_size
        r_i2t = np.array(rank_loop_i2t(sub, sub_owner.tolist()))
        r_t2i = np.array(rank_loop_t2i(sub, sub_owner.tolist()))
        per_fold.append(
            {"i2t_r1": 100 * np.mean(r_i2t <= 1), "t2i_r5": 100 * np.mean(r_t2i <= 5), "i2t_meanr": r_i2t.mean()}
        )
    for key in ("i2t_r1", "t2i_r5", "i2t_meanr"):
        assert got[key] == pytest.approx(np.mean([p[key] for p in per_fold]))
    # A fold's captions never compete with other folds' images: fold ranks <= the full gallery's.
    assert got["i2t_meanr"] <= retrieval_metrics(sim, owner)["i2t_meanr"]


def test_metric_input_errors():
    with pytest.raises(ShapeError, match="caption_item"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="no caption"):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="NaN"):
        retrieval_metrics(torch.full((2, 2), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="folds"):
        fold_metrics(torch.zeros(4, 4), torch.arange(4), 5, 1000)

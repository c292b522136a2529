"""`Aligner.score_pairs`: scores of chosen pairs equal the matrix entries, for every aligner."""

import pytest
import torch

from finealign.aligners.base import Aligner
from finealign.errors import ShapeError
from finealign.registry import create_aligner, list_aligners
from tests.conftest import random_batch

PAIRWISE_ALIGNERS = list_aligners()
# Options an aligner cannot default (its token dimension for learned layers).
REQUIRED_OPTIONS = {"weighted_mean_max": {"dim": 8}}


@pytest.mark.parametrize("name", PAIRWISE_ALIGNERS)
def test_score_pairs_equals_matrix_entries(name, gen):
    v = random_batch(5, 6, 8, generator=gen)
    t = random_batch(7, 5, 8, generator=gen)
    aligner = create_aligner(name, chunk_pairs=3, **REQUIRED_OPTIONS.get(name, {})).eval()
    pairs = torch.tensor([[0, 0], [4, 6], [2, 3], [2, 1], [1, 5], [3, 3], [0, 6], [4, 0]])
    with torch.no_grad():
        full = aligner(v, t)
        got = aligner.score_pairs(v, t, pairs)
    torch.testing.assert_close(got, full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PAIRWISE_ALIGNERS)
def test_score_pairs_default_pairs_item_with_item(name, gen):
    v = random_batch(6, 6, 8, generator=gen)
    t = random_batch(6, 5, 8, generator=gen)
    aligner = create_aligner(name, chunk_pairs=4, **REQUIRED_OPTIONS.get(name, {})).eval()
    with torch.no_grad():
        torch.testing.assert_close(aligner.score_pairs(v, t), aligner(v, t).diagonal(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["text", "both"])
def test_mean_max_fast_pairs_equal_the_generic_diagonal(direction, gen):
    v = random_batch(9, 6, 8, generator=gen)
    t = random_batch(9, 5, 8, generator=gen)
    aligner = create_aligner("mean_max", direction=direction)
    vp, tp = aligner.prepare(v), aligner.prepare(t)
    fast = aligner.score_pair_block(vp, tp)
    generic = Aligner.score_pair_block(aligner, vp, tp)
    torch.testing.assert_close(fast, generic)


def test_score_pairs_with_no_pairs_is_empty(gen):
    v = random_batch(3, 4, 8, generator=gen)
    t = random_batch(2, 4, 8, generator=gen)
    got = create_aligner("mean_max").score_pairs(v, t, torch.zeros(0, 2, dtype=torch.long))
    assert got.shape == (0,)


@pytest.mark.parametrize(
    "pairs,match",
    [
        (None, "equal lengths"),
        (torch.tensor([[0, 1, 2]]), r"\(P, 2\)"),
        (torch.tensor([0, 1]), r"\(P, 2\)"),
        (torch.tensor([[0.0, 1.0]]), "integer"),
        (torch.tensor([[3, 0]]), "visual index 3 outside"),
        (torch.tensor([[0, -1]]), "text index -1 outside"),
    ],
)
def test_score_pairs_rejects_bad_pairs(pairs, match, gen):
    v = random_batch(3, 4, 8, generator=gen)
    t = random_batch(2, 4, 8, generator=gen)
    with pytest.raises(ShapeError, match=match):
        create_aligner("mean_max").score_pairs(v, t, pairs)

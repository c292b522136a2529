"""Packed pooling (`segment_pool`) equals masked pooling over padded rows, and LogSumExp of a segment
far below the others does not underflow; the packed mean_max / hard paths equal the padded ones."""

import pytest
import torch

from finealign.aligners.base import masked_fill_pairs, token_similarities
from finealign.aligners.pooling import pool_masked, segment_pool
from finealign.registry import create_aligner
from tests.conftest import random_batch


@pytest.mark.parametrize("pooling", ["mean", "lse", "lse_chan"])
def test_segment_pool_equals_masked_pool(pooling):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 1, 5])
    padded = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < lengths[:, None]
    packed = padded[:, mask]  # (4, 9) real values, caption after caption
    owner = mask.nonzero()[:, 0]
    expected = pool_masked(padded, mask[None], -1, pooling, 0.1)
    torch.testing.assert_close(segment_pool(packed, owner, 3, pooling, 0.1), expected)


def test_segment_lse_does_not_underflow_far_below_the_row_max():
    values = torch.tensor([[0.9, -0.9]])
    out = segment_pool(values, torch.tensor([0, 1]), 2, "lse_chan", 0.005)  # exp(-360) underflows a shared shift
    torch.testing.assert_close(out, values / 0.005)


@pytest.mark.parametrize("name,options", [("mean_max", {}), ("mean_max", {"word_pooling": "sum", "scale": 10.0}),
                                          ("hard", {"pooling": "lse"}), ("hard", {"pooling": "lse_chan"}),
                                          ("hard", {"pooling": "mean"})])  # fmt: skip
def test_packed_text_direction_equals_the_padded_computation(gen, name, options):
    aligner = create_aligner(name, **options)
    visual, text = random_batch(4, 6, 8, generator=gen), random_batch(5, 7, 8, generator=gen)
    v, t = aligner.prepare(visual), aligner.prepare(text)
    sim = masked_fill_pairs(token_similarities(v, t), v.mask, t.mask, float("-inf"))
    torch.testing.assert_close(aligner.score_block(v, t), aligner._reduce(sim, v.mask[:, None, :], t.mask[None, :, :]))

import pytest
import torch

from finealign.errors import ShapeError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import global_pair, pairwise, token_mean
from tests.conftest import random_batch


def test_global_uses_pooled_when_given(gen):
    v = random_batch(7, 6, 8, generator=gen)
    t = random_batch(11, 5, 8, generator=gen)
    got = create_aligner("global")(v, t)
    ref = pairwise(v, t, lambda i, j: global_pair(v.pooled[i].double(), t.pooled[j].double()))
    assert got.shape == (7, 11)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["auto", "mean"])
def test_global_falls_back_to_masked_token_mean(source, gen):
    # "auto" without pooled, and "mean" even with pooled: the mean of the real raw tokens.
    v = random_batch(5, 6, 8, generator=gen, pooled=source == "mean")
    t = random_batch(4, 5, 8, generator=gen, pooled=False)
    got = create_aligner("global", source=source)(v, t)
    ref = pairwise(v, t, lambda i, j: global_pair(token_mean(v, i), token_mean(t, j)))
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_global_without_normalize_is_a_dot_product(gen):
    v = random_batch(3, 4, 8, generator=gen)
    t = random_batch(5, 4, 8, generator=gen)
    got = create_aligner("global", normalize=False)(v, t)
    torch.testing.assert_close(got, v.pooled @ t.pooled.T)


def test_global_source_pooled_requires_pooled(gen):
    v = random_batch(2, 4, 8, generator=gen, pooled=False)
    t = random_batch(2, 4, 8, generator=gen)
    with pytest.raises(ShapeError, match="visual.pooled is required"):
        create_aligner("global", source="pooled")(v, t)


def test_global_bf16_close_to_reference(gen):
    v = random_batch(5, 7, 16, generator=gen, pooled=False)
    t = random_batch(9, 4, 16, generator=gen)
    got = create_aligner("global")(v.to(torch.bfloat16), t.to(torch.bfloat16))
    ref = pairwise(v, t, lambda i, j: global_pair(token_mean(v, i), t.pooled[j].double()))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=3e-2, rtol=3e-2)


def test_global_gradcheck(gen):
    v = random_batch(3, 4, 5, generator=gen, dtype=torch.float64, pooled=False)
    t = random_batch(2, 3, 5, generator=gen, dtype=torch.float64)
    aligner = create_aligner("global")

    def fn(vt, tp):
        return aligner(TokenBatch(vt, v.mask), TokenBatch(t.tokens, t.mask, tp))

    inputs = (v.tokens.clone().requires_grad_(True), t.pooled.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs)


def test_global_has_no_token_alignment(gen):
    v = random_batch(1, 4, 8, generator=gen)
    t = random_batch(1, 4, 8, generator=gen)
    with pytest.raises(NotImplementedError, match="no word-to-region alignment"):
        create_aligner("global").explain(v, t)

import pytest
import torch

from finealign.registry import create_aligner
from tests.aligners.reference import mean_max_pair, pairwise, real_tokens
from tests.conftest import random_batch


@pytest.mark.parametrize("direction", ["text", "both"])
@pytest.mark.parametrize("chunks", [(64, 256), (3, 5), (1, 1)])
def test_mean_max_matches_loop_reference_fp32(direction, chunks, gen):
    v = random_batch(7, 6, 8, generator=gen)
    t = random_batch(11, 5, 8, generator=gen)
    aligner = create_aligner("mean_max", direction=direction, chunk_visual=chunks[0], chunk_text=chunks[1])
    got = aligner(v, t)
    ref = pairwise(v, t, lambda i, j: mean_max_pair(real_tokens(v, i), real_tokens(t, j), direction))
    assert got.shape == (7, 11)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_mean_max_bf16_close_to_reference(gen):
    v = random_batch(5, 7, 16, generator=gen)
    t = random_batch(9, 4, 16, generator=gen)
    got = create_aligner("mean_max", chunk_visual=2, chunk_text=4)(v.to(torch.bfloat16), t.to(torch.bfloat16))
    ref = pairwise(v, t, lambda i, j: mean_max_pair(real_tokens(v, i), real_tokens(t, j)))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=3e-2, rtol=3e-2)


def test_mean_max_gradcheck(gen):
    v = random_batch(2, 3, 4, generator=gen, dtype=torch.float64)
    t = random_batch(3, 3, 4, generator=gen, dtype=torch.float64)
    v.tokens.requires_grad_(True)
    t.tokens.requires_grad_(True)
    aligner = create_aligner("mean_max", direction="both", chunk_visual=1, chunk_text=2)

    def fn(vt, tt):
        return aligner(type(v)(vt, v.mask, v.pooled), type(t)(tt, t.mask, t.pooled))

    assert torch.autograd.gradcheck(fn, (v.tokens, t.tokens))


def test_mean_max_explain_matches_matrix_entry(gen):
    v = random_batch(1, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    aligner = create_aligner("mean_max")
    expl = aligner.explain(v, t)
    assert expl.weights.shape == (int(t.mask.sum()), int(v.mask.sum()))
    assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)
    ref_best = (real_tokens(t, 0) @ real_tokens(v, 0).T).argmax(1)
    assert torch.equal(expl.word_to_region, ref_best)

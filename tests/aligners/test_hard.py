import pytest
import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import hard_pair, pairwise, real_tokens
from tests.conftest import random_batch


@pytest.mark.parametrize("pooling,temperature", [("mean", 0.1), ("lse", 0.1), ("lse", 0.5)])
@pytest.mark.parametrize("direction", ["text", "visual", "both"])
@pytest.mark.parametrize("chunks", [(64, 256), (3, 5)])
def test_hard_matches_loop_reference_fp32(pooling, temperature, direction, chunks, gen):
    v = random_batch(7, 6, 8, generator=gen)
    t = random_batch(11, 5, 8, generator=gen)
    aligner = create_aligner(
        "hard",
        pooling=pooling,
        temperature=temperature,
        direction=direction,
        chunk_visual=chunks[0],
        chunk_text=chunks[1],
    )
    got = aligner(v, t)
    ref = pairwise(v, t, lambda i, j: hard_pair(real_tokens(v, i), real_tokens(t, j), pooling, temperature, direction))
    assert got.shape == (7, 11)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_hard_without_normalize_uses_dot_products(gen):
    v = random_batch(4, 5, 6, generator=gen)
    t = random_batch(3, 4, 6, generator=gen)
    got = create_aligner("hard", normalize=False, temperature=2.0, chunk_visual=3, chunk_text=2)(v, t)
    ref = pairwise(
        v,
        t,
        lambda i, j: hard_pair(real_tokens(v, i, normalize=False), real_tokens(t, j, normalize=False), "lse", 2.0),
    )
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["text", "both"])
def test_hard_with_mean_pooling_equals_mean_max(direction, gen):
    v = random_batch(6, 7, 8, generator=gen)
    t = random_batch(5, 6, 8, generator=gen)
    hard = create_aligner("hard", pooling="mean", direction=direction)(v, t)
    mean_max = create_aligner("mean_max", direction=direction)(v, t)
    torch.testing.assert_close(hard, mean_max)


def test_hard_lse_lies_between_max_and_max_plus_log_n(gen):
    # τ·logsumexp(x/τ) ∈ [max x, max x + τ·log n]: a sanity bound independent of the reference.
    v = random_batch(4, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    tau = 0.1
    lse = create_aligner("hard", temperature=tau)(v, t)[:, 0]
    word_best = create_aligner("hard", temperature=1e-4)(v, t)[:, 0]  # ≈ max over words
    n = int(t.mask.sum())
    assert bool((lse >= word_best - 1e-3).all())
    assert bool((lse <= word_best + tau * torch.log(torch.tensor(float(n))) + 1e-3).all())


def test_hard_bf16_close_to_reference(gen):
    v = random_batch(5, 7, 16, generator=gen)
    t = random_batch(9, 4, 16, generator=gen)
    aligner = create_aligner("hard", direction="both", chunk_visual=2, chunk_text=4)
    got = aligner(v.to(torch.bfloat16), t.to(torch.bfloat16))
    ref = pairwise(v, t, lambda i, j: hard_pair(real_tokens(v, i), real_tokens(t, j), direction="both"))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("pooling", ["mean", "lse"])
def test_hard_gradcheck(pooling, gen):
    v = random_batch(2, 3, 4, generator=gen, dtype=torch.float64)
    t = random_batch(3, 3, 4, generator=gen, dtype=torch.float64)
    aligner = create_aligner("hard", pooling=pooling, temperature=0.3, direction="both", chunk_visual=1, chunk_text=2)

    def fn(vt, tt):
        return aligner(TokenBatch(vt, v.mask), TokenBatch(tt, t.mask))

    inputs = (v.tokens.clone().requires_grad_(True), t.tokens.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs)


def test_hard_explain_is_one_hot_and_matches_matrix_entry(gen):
    v = random_batch(1, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    aligner = create_aligner("hard")
    expl = aligner.explain(v, t)
    n_words, n_regions = int(t.mask.sum()), int(v.mask.sum())
    assert expl.weights.shape == (n_words, n_regions)
    assert torch.equal(expl.weights.sum(1), torch.ones(n_words))
    assert torch.equal(expl.weights.argmax(1), expl.word_to_region)
    assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)
    ref_best = (real_tokens(t, 0) @ real_tokens(v, 0).T).argmax(1)
    assert torch.equal(expl.word_to_region, ref_best)

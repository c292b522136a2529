import pytest
import torch

from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import cross_attention_pair, pairwise, real_tokens, scan_attention
from tests.conftest import random_batch

OPTIONS = [
    dict(),
    dict(scan_norm=False),
    dict(pooling="lse", temperature=0.2),
    dict(lambda_softmax=2.0, scan_norm=False, pooling="lse"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("chunks", [(64, 256), (3, 5)])
def test_cross_attention_matches_loop_reference_fp32(options, chunks, gen):
    v = random_batch(7, 6, 8, generator=gen)
    t = random_batch(11, 5, 8, generator=gen)
    aligner = create_aligner("cross_attention", chunk_visual=chunks[0], chunk_text=chunks[1], **options)
    got = aligner(v, t)
    ref = pairwise(v, t, lambda i, j: cross_attention_pair(real_tokens(v, i), real_tokens(t, j), **options))
    assert got.shape == (7, 11)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_without_normalize(gen):
    # Attention then runs on raw dot products; the per-word relevance stays a cosine.
    v = random_batch(4, 5, 6, generator=gen)
    t = random_batch(3, 4, 6, generator=gen)
    got = create_aligner("cross_attention", normalize=False, lambda_softmax=0.5, chunk_text=2)(v, t)
    ref = pairwise(
        v,
        t,
        lambda i, j: cross_attention_pair(
            real_tokens(v, i, normalize=False), real_tokens(t, j, normalize=False), lambda_softmax=0.5
        ),
    )
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_bf16_close_to_reference(gen):
    v = random_batch(5, 7, 16, generator=gen)
    t = random_batch(9, 4, 16, generator=gen)
    aligner = create_aligner("cross_attention", chunk_visual=2, chunk_text=4)
    got = aligner(v.to(torch.bfloat16), t.to(torch.bfloat16))
    ref = pairwise(v, t, lambda i, j: cross_attention_pair(real_tokens(v, i), real_tokens(t, j)))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("options", [dict(), dict(scan_norm=False, pooling="lse", temperature=0.5)], ids=str)
def test_cross_attention_gradcheck(options, gen):
    v = random_batch(2, 3, 4, generator=gen, dtype=torch.float64)
    t = random_batch(3, 3, 4, generator=gen, dtype=torch.float64)
    aligner = create_aligner("cross_attention", lambda_softmax=3.0, chunk_visual=1, chunk_text=2, **options)

    def fn(vt, tt):
        return aligner(TokenBatch(vt, v.mask), TokenBatch(tt, t.mask))

    inputs = (v.tokens.clone().requires_grad_(True), t.tokens.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs)


def test_cross_attention_explain_is_the_attention_matrix(gen):
    v = random_batch(1, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    aligner = create_aligner("cross_attention")
    expl = aligner.explain(v, t)
    n_words = int(t.mask.sum())
    assert expl.weights.shape == (n_words, int(v.mask.sum()))
    ref = torch.tensor(scan_attention(real_tokens(v, 0), real_tokens(t, 0)), dtype=torch.float64)
    torch.testing.assert_close(expl.weights.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(expl.weights.sum(1), torch.ones(n_words))
    assert torch.equal(expl.word_to_region, expl.weights.argmax(1))
    assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(scan_norm=False, pooling="lse"),
        dict(lambda_softmax=120.0),
        dict(normalize=False, lambda_softmax=0.5),
    ],
    ids=["default", "no-scan-norm-lse", "large-lambda", "raw"],
)
def test_cross_attention_packed_block_equals_the_padded_block(options, gen):
    """score_block packs the captions' real words and groups them by length: same scores and
    gradients as the padded per-pair block (float64; padded regions and words, captions of
    mixed lengths in no particular order)."""
    v = random_batch(4, 6, 8, generator=gen, dtype=torch.float64)
    t = random_batch(7, 5, 8, generator=gen, dtype=torch.float64)
    aligner = create_aligner("cross_attention", **options).double()
    pv, pt = aligner.prepare(v), aligner.prepare(t)
    results = []
    for score in (aligner.packed_block_scores, aligner.padded_block_scores):
        leaves = [pv.tokens.clone().requires_grad_(), pt.tokens.clone().requires_grad_()]
        scores = score(TokenBatch(leaves[0], pv.mask), TokenBatch(leaves[1], pt.mask))
        results.append((scores.detach(), torch.autograd.grad((scores * torch.arange(28.0).view(4, 7)).sum(), leaves)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    for got, ref in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-9)

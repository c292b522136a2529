"""Property tests (hypothesis) for every registered aligner over random shapes, masks, dtypes and
scales: scores are finite, do not see what padding holds, do not depend on where the padding sits
(token order), and — for cosine aligners — do not depend on the tokens' scale."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finealign.registry import create_aligner, list_aligners
from finealign.tokens import TokenBatch

ALIGNERS = list_aligners()
PROFILE = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    dim = draw(st.integers(2, 8))
    shapes = [(draw(st.integers(1, 4)), draw(st.integers(1, 5))) for _ in range(2)]
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    batches = []
    for n, length in shapes:
        mask = torch.rand(n, length, generator=g) < 0.7
        mask[torch.arange(n), torch.randint(0, length, (n,), generator=g)] = True  # ≥ 1 real token per item
        tokens = torch.randn(n, length, dim, generator=g)
        batches.append(TokenBatch(tokens, mask, tokens.mean(1)))
    return dim, batches[0], batches[1], seed


def _aligner(name, dim):
    options = {"dim": dim} if name == "weighted_mean_max" else {}
    if name == "two_stage":
        options["top_k"] = 2
    torch.manual_seed(0)
    return create_aligner(name, **options).eval()


def _score(aligner, visual, text):
    with torch.no_grad():
        return aligner(visual, text).double()


@pytest.mark.parametrize("name", ALIGNERS)
@PROFILE
@given(problems(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_scores_are_finite(name, problem, dtype):
    dim, visual, text, _ = problem
    aligner = _aligner(name, dim).to(dtype)
    cast = lambda b: TokenBatch(b.tokens.to(dtype), b.mask, b.pooled.to(dtype))  # noqa: E731
    scores = _score(aligner, cast(visual), cast(text))
    assert scores.shape == (len(visual), len(text)) and bool(torch.isfinite(scores).all())


@pytest.mark.parametrize("name", ALIGNERS)
@PROFILE
@given(problems())
def test_what_padding_holds_does_not_matter(name, problem):
    dim, visual, text, seed = problem
    aligner = _aligner(name, dim)
    g = torch.Generator().manual_seed(seed + 1)

    def garbage(b):
        noise = 1e6 * torch.randn(b.tokens.shape, generator=g)
        return TokenBatch(torch.where(b.mask[..., None], b.tokens, noise), b.mask, b.pooled)

    torch.testing.assert_close(_score(aligner, garbage(visual), garbage(text)), _score(aligner, visual, text))


@pytest.mark.parametrize("name", ALIGNERS)
@PROFILE
@given(problems())
def test_where_the_padding_sits_does_not_matter(name, problem):
    dim, visual, text, seed = problem
    aligner = _aligner(name, dim)
    g = torch.Generator().manual_seed(seed + 2)

    def shuffled(b):  # the same tokens, padding moved to other positions (order is not an input)
        order = torch.randperm(b.tokens.shape[1], generator=g)
        return TokenBatch(b.tokens[:, order], b.mask[:, order], b.pooled)

    torch.testing.assert_close(_score(aligner, shuffled(visual), shuffled(text)), _score(aligner, visual, text),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("name", ALIGNERS)
@PROFILE
@given(problems(), st.integers(-20, 20))
def test_cosine_scores_are_scale_free(name, problem, exponent):
    dim, visual, text, _ = problem
    aligner = _aligner(name, dim)
    if not getattr(aligner.config, "normalize", False):
        return  # an aligner configured for raw dot products is allowed to see scale
    c = 10.0**exponent
    scaled = lambda b: TokenBatch(b.tokens * c, b.mask, b.pooled * c)  # noqa: E731
    torch.testing.assert_close(_score(aligner, scaled(visual), scaled(text)), _score(aligner, visual, text),
                               atol=1e-4, rtol=1e-4)  # fmt: skip

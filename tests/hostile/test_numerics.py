"""Hostile numerics for every registered aligner: fp16/bf16 with zero tokens and zeroed padding
stays finite, cosine scores do not care about the tokens' scale (×1e19, ×1e-30), and an all-zero
real token has the documented cosine 0."""

import pytest
import torch

from finealign.kernels.normalize import l2_normalize
from finealign.registry import create_aligner, list_aligners
from finealign.tokens import TokenBatch

DIM = 16


def _options(name):
    opts = {"dim": DIM} if name in ("weighted_mean_max",) else {}
    return {**opts, "top_k": 3} if name == "two_stage" else opts


def _batch(n, length, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, DIM, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1::2, length // 2 :] = False
    tokens[~mask] = 0.0  # zeroed padding, as encoders emit it
    return TokenBatch(tokens.to(dtype), mask, tokens.mean(1).to(dtype))


def _scaled(batch, factor):
    return TokenBatch(batch.tokens * factor, batch.mask, batch.pooled * factor)


@pytest.mark.parametrize("name", list_aligners())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_with_zero_tokens_and_zero_padding_is_finite(name, dtype):
    torch.manual_seed(0)
    aligner = create_aligner(name, **_options(name)).to(dtype)
    visual, text = _batch(4, 6, 0, dtype), _batch(5, 5, 1, dtype)
    visual.tokens[0, 1] = 0.0  # an all-zero *real* token
    text.tokens[2, 0] = 0.0
    with torch.no_grad():
        scores = aligner(visual, text)
    assert scores.shape == (4, 5) and bool(torch.isfinite(scores).all()), f"{name} {dtype}: {scores}"


@pytest.mark.parametrize("name", list_aligners())
@pytest.mark.parametrize("factor", [1e19, 1e-30])
def test_cosine_scores_do_not_depend_on_the_tokens_scale(name, factor):
    torch.manual_seed(0)
    aligner = create_aligner(name, **_options(name)).eval()
    if not getattr(aligner.config, "normalize", False):
        pytest.skip(f"{name} does not normalise")
    visual, text = _batch(4, 6, 0), _batch(5, 5, 1)
    with torch.no_grad():
        base = aligner(visual, text)
        scaled = aligner(_scaled(visual, factor), _scaled(text, factor))
    torch.testing.assert_close(scaled, base, atol=1e-4, rtol=1e-4)


def test_l2_normalize_defines_zero_and_is_scale_free():
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        out = l2_normalize(x.to(dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.float(), torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]]), atol=2e-3, rtol=0)
    for factor in (1e19, 1e-30, 1e-40):
        torch.testing.assert_close(l2_normalize(x * factor), l2_normalize(x))

import pytest
import torch

from finealign.errors import ConfigError, ShapeError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import pairwise, real_tokens, weighted_mean_max_pair
from tests.conftest import random_batch


def make(dim, direction="both", seed=0, **kwargs):
    """An aligner whose weight layers are random (they start at zero), so weights matter."""
    aligner = create_aligner("weighted_mean_max", dim=dim, direction=direction, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in aligner.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=g))
    return aligner


def layer_params(layer):
    return None if layer is None else (layer.weight[0].detach().double(), layer.bias[0].detach().double())


def reference(aligner, v, t, direction, normalize=True):
    wt, wv = layer_params(aligner.text_weight), layer_params(aligner.visual_weight)
    return pairwise(
        v,
        t,
        lambda i, j: weighted_mean_max_pair(
            real_tokens(v, i, normalize), real_tokens(t, j, normalize), wt, wv, direction
        ),
    )


@pytest.mark.parametrize("direction", ["text", "visual", "both"])
@pytest.mark.parametrize("chunks", [(64, 256), (3, 5)])
def test_weighted_mean_max_matches_loop_reference_fp32(direction, chunks, gen):
    v = random_batch(7, 6, 8, generator=gen)
    t = random_batch(11, 5, 8, generator=gen)
    aligner = make(8, direction, chunk_visual=chunks[0], chunk_text=chunks[1])
    got = aligner(v, t)
    assert got.shape == (7, 11)
    torch.testing.assert_close(got.double(), reference(aligner, v, t, direction), atol=1e-5, rtol=1e-5)


def test_weighted_mean_max_without_normalize(gen):
    v = random_batch(4, 5, 6, generator=gen)
    t = random_batch(3, 4, 6, generator=gen)
    aligner = make(6, normalize=False, chunk_visual=3, chunk_text=2)
    ref = reference(aligner, v, t, "both", normalize=False)
    torch.testing.assert_close(aligner(v, t).double(), ref, atol=1e-5, rtol=1e-5)


def test_only_the_layers_the_direction_uses_exist():
    assert create_aligner("weighted_mean_max", dim=4, direction="text").visual_weight is None
    assert create_aligner("weighted_mean_max", dim=4, direction="visual").text_weight is None
    assert sum(p.numel() for p in create_aligner("weighted_mean_max", dim=4).parameters()) == 2 * (4 + 1)


@pytest.mark.parametrize("direction", ["text", "both"])
def test_untrained_weighted_mean_max_equals_mean_max(direction, gen):
    # Zero-initialised weight layers give uniform weights over the real tokens.
    v = random_batch(6, 7, 8, generator=gen)
    t = random_batch(5, 6, 8, generator=gen)
    got = create_aligner("weighted_mean_max", dim=8, direction=direction)(v, t)
    torch.testing.assert_close(got, create_aligner("mean_max", direction=direction)(v, t))


def test_weighted_mean_max_bf16_close_to_reference(gen):
    v = random_batch(5, 7, 16, generator=gen)
    t = random_batch(9, 4, 16, generator=gen)
    aligner = make(16, chunk_visual=2, chunk_text=4)
    ref = reference(aligner, v, t, "both")
    got = aligner.to(torch.bfloat16)(v.to(torch.bfloat16), t.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=3e-2, rtol=3e-2)


def test_weighted_mean_max_gradcheck_tokens_and_weights(gen):
    v = random_batch(2, 3, 4, generator=gen, dtype=torch.float64)
    t = random_batch(3, 3, 4, generator=gen, dtype=torch.float64)
    aligner = make(4, chunk_visual=1, chunk_text=2).double()
    names = [name for name, _ in aligner.named_parameters()]

    def fn(vt, tt, *params):
        state = dict(zip(names, params))
        return torch.func.functional_call(aligner, state, (TokenBatch(vt, v.mask), TokenBatch(tt, t.mask)))

    params = [p.detach().clone().requires_grad_(True) for p in aligner.parameters()]
    inputs = (v.tokens.clone().requires_grad_(True), t.tokens.clone().requires_grad_(True), *params)
    assert torch.autograd.gradcheck(fn, inputs)


def test_weight_layers_receive_gradients(gen):
    v = random_batch(3, 4, 8, generator=gen)
    t = random_batch(3, 4, 8, generator=gen)
    aligner = make(8)
    aligner(v, t).diagonal().sum().backward()
    for name, p in aligner.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_weighted_mean_max_explain_matches_matrix_entry(gen):
    v = random_batch(1, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    aligner = make(8)
    expl = aligner.explain(v, t)
    n_words = int(t.mask.sum())
    assert expl.weights.shape == (n_words, int(v.mask.sum()))
    with torch.no_grad():
        assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)
    assert float(expl.weights.sum()) == pytest.approx(1.0, abs=1e-6)  # word weights sum to 1
    assert int((expl.weights > 0).sum()) == n_words  # one region per word
    ref_best = (real_tokens(t, 0) @ real_tokens(v, 0).T).argmax(1)
    assert torch.equal(expl.word_to_region, ref_best)


def test_weighted_mean_max_needs_a_positive_dim(gen):
    with pytest.raises(ConfigError, match="needs `dim`"):
        create_aligner("weighted_mean_max")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="dim must be a positive int"):
            create_aligner("weighted_mean_max", dim=bad)
    v = random_batch(2, 3, 8, generator=gen)
    with pytest.raises(ShapeError, match="dim=4 but the tokens have d=8"):
        create_aligner("weighted_mean_max", dim=4)(v, v)

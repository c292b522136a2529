"""Scoring listed (image, caption) pairs — two_stage's re-ranking — with the pair kernels
(Triton; CPU interpreter here) and the torch pair paths: entry p equals the full matrix at
pairs[p], on padded inputs of awkward sizes, for every pooling and direction."""

from __future__ import annotations

import pytest
import torch

from finealign.errors import ConfigError, ShapeError
from finealign.kernels import maxsim_scores, sinkhorn_flow_scores
from tests.kernels.inputs import one_real_token, pooled, token_weights, tokens

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _pairs(nv: int, nt: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random pairs, with repeats, plus the last image and caption (edge indices)."""
    p = torch.stack([torch.randint(0, nv, (n,), generator=gen), torch.randint(0, nt, (n,), generator=gen)], 1)
    return torch.cat([p, torch.tensor([[nv - 1, nt - 1], [0, 0], [nv - 1, nt - 1]])])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("direction", ["text", "visual", "both"])
@pytest.mark.parametrize("pooling", ["mean", "weighted", "lse"])
def test_maxsim_pairs_equal_the_matrix_entries(pooling, direction, backend, gen):
    v, vm = tokens(5, 7, 12, gen)
    t, tm = tokens(6, 5, 12, gen)  # 5 words: below tl.dot's 16, so the pair tile is padded
    kw = dict(text_weights=token_weights(tm, gen).float(), visual_weights=token_weights(vm, gen).float())
    kw = kw if pooling == "weighted" else {}
    pairs = _pairs(5, 6, 9, gen)
    full = maxsim_scores(
        v.double(),
        vm,
        t.double(),
        tm,
        pooling,
        direction,
        0.2,
        backend="torch",
        **{k: w.double() for k, w in kw.items()},
    )
    got = maxsim_scores(v, vm, t, tm, pooling, direction, 0.2, backend=backend, pairs=pairs, **kw)
    assert got.shape == (len(pairs),) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_maxsim_pairs_awkward_sizes(backend, gen):
    for (v, vm), (t, tm) in (
        (tokens(1, 1, 16, gen), tokens(1, 1, 16, gen)),  # one token each side
        (tokens(3, 20, 40, gen), tokens(4, 33, 40, gen)),  # past a power of two
        (one_real_token(3, 5, 8, gen), one_real_token(4, 3, 8, gen)),  # all but one padded
    ):
        pairs = _pairs(len(v), len(t), 5, gen)
        full = maxsim_scores(v.double(), vm, t.double(), tm, "mean", "both", backend="torch")
        got = maxsim_scores(v, vm, t, tm, "mean", "both", backend=backend, pairs=pairs)
        torch.testing.assert_close(got.double(), full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_no_pairs_give_an_empty_result(backend, gen):
    v, vm = tokens(2, 4, 8, gen)
    t, tm = tokens(3, 4, 8, gen)
    empty = torch.zeros(0, 2, dtype=torch.long)
    assert maxsim_scores(v, vm, t, tm, backend=backend, pairs=empty).shape == (0,)
    assert sinkhorn_flow_scores(v, vm, t, tm, backend=backend, pairs=empty).shape == (0,)


def test_pair_gradients_flow_through_the_torch_path(gen):
    """The pair kernel is forward-only: with autograd on, "auto" takes torch and the gradient
    equals the full matrix's; "triton" says so instead of dropping the gradient."""
    v, vm = tokens(3, 6, 8, gen)
    t, tm = tokens(4, 5, 8, gen)
    pairs = _pairs(3, 4, 4, gen)
    grads = []
    for use_pairs in (True, False):
        x = v.double().clone().requires_grad_()
        out = maxsim_scores(x, vm, t.double(), tm, "lse", "both", pairs=pairs if use_pairs else None)
        (out if use_pairs else out[pairs[:, 0], pairs[:, 1]]).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ConfigError, match="forward-only"):
        maxsim_scores(v.clone().requires_grad_(), vm, t, tm, backend="triton", pairs=pairs)


@pytest.mark.parametrize(
    "pairs, message",
    [
        (torch.tensor([[0, 4]]), "text index 4 outside"),
        (torch.tensor([[-1, 0]]), "visual index -1 outside"),
        (torch.tensor([0, 1]), r"\(P, 2\)"),
        (torch.tensor([[0.0, 1.0]]), "integer"),
    ],
)
def test_bad_pairs_are_named(pairs, message, gen):
    v, vm = tokens(2, 4, 8, gen)
    t, tm = tokens(4, 4, 8, gen)
    for fn in (maxsim_scores, sinkhorn_flow_scores):
        with pytest.raises(ShapeError, match=message):
            fn(v, vm, t, tm, pairs=pairs)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(rows="text"),
        dict(one_sided=True),
        dict(importance=True),
        dict(domain="scaling"),
        dict(domain="scaling", importance=True, rows="text"),
    ],
    ids=["uniform", "text-rows", "one-sided", "importance", "scaling", "scaling-importance-text-rows"],
)
def test_sinkhorn_pairs_equal_the_matrix_entries(options, backend, gen):
    v, vm = tokens(4, 6, 12, gen)
    t, tm = tokens(5, 7, 12, gen)
    options = dict(options, iterations=5)
    if options.pop("importance", False):
        options.update(visual_pooled=pooled(v, vm), text_pooled=pooled(t, tm))
    pairs = _pairs(4, 5, 6, gen)
    double = {k: (x.double() if isinstance(x, torch.Tensor) else x) for k, x in options.items() if k != "domain"}
    full = sinkhorn_flow_scores(v.double(), vm, t.double(), tm, backend="torch", **double)
    got = sinkhorn_flow_scores(v, vm, t, tm, backend=backend, pairs=pairs, **options)
    torch.testing.assert_close(got.double(), full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)

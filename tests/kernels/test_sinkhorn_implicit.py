"""Implicit differentiation of Sinkhorn: the gradient from the optimality conditions equals the
gradient of the unrolled solver run to convergence (float64, padded problems), passes gradcheck,
and TokenFlow trained with it gets the unrolled gradients."""

import pytest
import torch

from finealign.errors import ConfigError
from finealign.kernels.sinkhorn import sinkhorn
from finealign.kernels.sinkhorn_implicit import implicit_sinkhorn
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.conftest import random_batch


def _problem(seed=0, batch=4, n=5, m=4):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=g, dtype=torch.float64)
    za = torch.randn(batch, n, generator=g, dtype=torch.float64)
    zb = torch.randn(batch, m, generator=g, dtype=torch.float64)
    mask_a, mask_b = torch.ones(batch, n, dtype=torch.bool), torch.ones(batch, m, dtype=torch.bool)
    mask_a[1, 3:] = False
    mask_b[2, 1:] = False  # a one-word caption
    mask_a[3, 1:] = False  # a one-region image
    return cost, za, zb, mask_a, mask_b, torch.randn(batch, n, m, generator=g, dtype=torch.float64)


def _loss(solve, cost, za, zb, mask_a, mask_b, weights, epsilon=0.1):
    log_a = torch.log_softmax(za.masked_fill(~mask_a, float("-inf")), 1)
    log_b = torch.log_softmax(zb.masked_fill(~mask_b, float("-inf")), 1)
    plan = solve(cost, log_a, log_b, mask_a, mask_b, epsilon, 20_000, tolerance=1e-13, domain="log").plan
    return (plan * weights).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_implicit_gradient_equals_the_converged_unrolled_one(seed):
    cost, za, zb, mask_a, mask_b, weights = _problem(seed)
    leaves = [x.clone().requires_grad_() for x in (cost, za, zb)]
    unrolled = torch.autograd.grad(_loss(sinkhorn, *leaves, mask_a, mask_b, weights), leaves)
    implicit = torch.autograd.grad(_loss(implicit_sinkhorn, *leaves, mask_a, mask_b, weights), leaves)
    for name, a, b in zip(("cost", "log_a", "log_b"), implicit, unrolled, strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6, msg=name)


def test_implicit_gradient_passes_gradcheck():
    cost, za, zb, mask_a, mask_b, weights = _problem(3, batch=4, n=4, m=3)
    fn = lambda c, a, b: _loss(implicit_sinkhorn, c, a, b, mask_a, mask_b, weights)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_() for x in (cost, za, zb)), atol=1e-6)


def test_tokenflow_trains_with_implicit_gradients_equal_to_unrolled(gen):
    visual, text = random_batch(3, 5, 6, generator=gen), random_batch(4, 4, 6, generator=gen)
    grads = {}
    for gradient in ("implicit", "unrolled"):
        aligner = create_aligner("tokenflow", tolerance=1e-7, iterations=5000, gradient=gradient).double().train()
        leaves = [x.double().clone().requires_grad_() for x in (visual.tokens, visual.pooled, text.tokens, text.pooled)]
        scores = aligner(TokenBatch(leaves[0], visual.mask, leaves[1]), TokenBatch(leaves[2], text.mask, leaves[3]))
        (scores * torch.arange(12.0, dtype=torch.float64).reshape(3, 4)).sum().backward()
        grads[gradient] = (scores.detach(), [x.grad for x in leaves])
    torch.testing.assert_close(grads["implicit"][0], grads["unrolled"][0])
    for a, b in zip(grads["implicit"][1], grads["unrolled"][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [{"gradient": "implicit", "tolerance": 0}, {"gradient": "implicit", "relax_visual": True},
                                     {"gradient": "backprop"}])  # fmt: skip
def test_implicit_needs_a_converged_two_sided_plan(options):
    with pytest.raises(ConfigError, match="gradient"):
        create_aligner("tokenflow", **options)

import numpy as np
import ot
import pytest
import torch

from finealign.aligners.sinkhorn import log_sinkhorn
from finealign.errors import ConfigError, ShapeError


def random_problems(batch, n, m, generator, dtype=torch.float64):
    """Random costs in [0, 2] and random positive marginals on random (never empty) masks."""
    cost = 2 * torch.rand(batch, n, m, generator=generator, dtype=torch.float64)
    mask_a = torch.rand(batch, n, generator=generator) < 0.7
    mask_b = torch.rand(batch, m, generator=generator) < 0.7
    mask_a[:, 0] = True
    mask_b[:, -1] = True
    log_a = torch.log_softmax(torch.randn(batch, n, generator=generator, dtype=torch.float64).masked_fill(~mask_a, -torch.inf), -1)
    log_b = torch.log_softmax(torch.randn(batch, m, generator=generator, dtype=torch.float64).masked_fill(~mask_b, -torch.inf), -1)
    return cost.to(dtype), log_a.to(dtype), log_b.to(dtype), mask_a, mask_b


def pot_plan(cost, log_a, log_b, mask_a, mask_b, eps, iterations):
    """POT's log-domain Sinkhorn on the real rows/columns only, scattered back into (n, m).

    POT updates its second marginal first; solving the transposed problem makes its update
    order (rows, then columns of ours) identical to ours, so equal iteration counts agree.
    """
    a = log_a[mask_a].exp().numpy()
    b = log_b[mask_b].exp().numpy()
    sub = cost[mask_a][:, mask_b].numpy()
    plan_t = ot.sinkhorn(b, a, sub.T, eps, method="sinkhorn_log", numItermax=iterations, stopThr=0.0, warn=False)
    full = np.zeros(tuple(cost.shape))
    full[np.ix_(mask_a.numpy(), mask_b.numpy())] = plan_t.T
    return torch.from_numpy(full)


@pytest.mark.parametrize("eps,iterations", [(0.5, 5), (0.05, 40), (0.01, 300)])
def test_log_sinkhorn_matches_pot_per_problem(eps, iterations, gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(4, 5, 7, gen)
    plan = log_sinkhorn(cost, log_a, log_b, mask_a, mask_b, eps, iterations)
    for p in range(len(cost)):
        ref = pot_plan(cost[p], log_a[p], log_b[p], mask_a[p], mask_b[p], eps, iterations)
        torch.testing.assert_close(plan[p], ref, atol=1e-10, rtol=1e-8)


def test_log_sinkhorn_marginals_and_exact_zero_padding(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(8, 6, 5, gen)
    plan = log_sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.05, 500)
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    assert bool((plan[~valid] == 0).all())
    # The last update is the column one: column sums are exact, row sums converged.
    torch.testing.assert_close(plan.sum(1), log_b.exp(), atol=1e-12, rtol=0)
    torch.testing.assert_close(plan.sum(2), log_a.exp(), atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum((1, 2)), torch.ones(8, dtype=plan.dtype))


def test_log_sinkhorn_tiny_epsilon_is_finite_with_finite_gradients(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(4, 6, 5, gen, dtype=torch.float32)
    cost.requires_grad_(True)
    plan = log_sinkhorn(cost, log_a, log_b, mask_a, mask_b, 1e-4, 200)
    assert bool(torch.isfinite(plan).all())
    # fp32 potentials of size |C|/ε ≈ 2e4 keep ~4 significant digits of the plan.
    torch.testing.assert_close(plan.sum(1), log_b.exp(), atol=1e-4, rtol=0)
    (plan * cost).sum().backward()
    assert bool(torch.isfinite(cost.grad).all())
    # No gradient reaches padded cost entries: they do not exist for the problem.
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    assert bool((cost.grad[~valid] == 0).all())


def test_log_sinkhorn_one_sided_is_column_softmax(gen):
    cost, _, log_b, mask_a, mask_b = random_problems(5, 6, 4, gen)
    eps = 0.1
    plan = log_sinkhorn(cost, None, log_b, mask_a, mask_b, eps, 1)
    for p in range(len(cost)):
        for j in range(cost.shape[2]):
            if not mask_b[p, j]:
                assert bool((plan[p, :, j] == 0).all())
                continue
            weights = torch.exp(-cost[p, mask_a[p], j] / eps)
            expected = log_b[p, j].exp() * weights / weights.sum()
            torch.testing.assert_close(plan[p, mask_a[p], j], expected)
            assert bool((plan[p, ~mask_a[p], j] == 0).all())


def test_log_sinkhorn_gradcheck(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(2, 3, 4, gen)
    cost.requires_grad_(True)
    log_a.requires_grad_(True)

    def fn(c, la):
        return log_sinkhorn(c, la, log_b, mask_a, mask_b, 0.3, 8)

    assert torch.autograd.gradcheck(fn, (cost, log_a))


def test_log_sinkhorn_rejects_bad_inputs(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(2, 3, 4, gen)
    with pytest.raises(ShapeError, match="cost must be"):
        log_sinkhorn(cost[0], log_a, log_b, mask_a, mask_b, 0.1, 3)
    with pytest.raises(ShapeError, match="masks must be"):
        log_sinkhorn(cost, log_a, log_b, mask_a[:, :2], mask_b, 0.1, 3)
    with pytest.raises(ShapeError, match="log marginals"):
        log_sinkhorn(cost, log_a, log_b[:, :2], mask_a, mask_b, 0.1, 3)
    with pytest.raises(ConfigError, match="epsilon"):
        log_sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.0, 3)
    with pytest.raises(ConfigError, match="iterations"):
        log_sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.1, 0)

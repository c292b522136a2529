import numpy as np
import ot
import pytest
import torch

from finealign.errors import ConfigError, ShapeError
from finealign.kernels.sinkhorn import log_sinkhorn


def random_problems(batch, n, m, generator, dtype=torch.float64):
    """Random costs in [0, 2] and random positive marginals on random (never empty) masks."""
    cost = 2 * torch.rand(batch, n, m, generator=generator, dtype=torch.float64)
    mask_a = torch.rand(batch, n, generator=generator) < 0.7
    mask_b = torch.rand(batch, m, generator=generator) < 0.7
    mask_a[:, 0] = True
    mask_b[:, -1] = True
    log_a = torch.log_softmax(
        torch.randn(batch, n, generator=generator, dtype=torch.float64).masked_fill(~mask_a, -torch.inf), -1
    )
    log_b = torch.log_softmax(
        torch.randn(batch, m, generator=generator, dtype=torch.float64).masked_fill(~mask_b, -torch.inf), -1
    )
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


# -- tolerance and the scaling domain --------------------------------------------------------

from finealign.kernels.sinkhorn import sinkhorn  # noqa: E402


def row_l1_error(plan, log_a, mask_a) -> torch.Tensor:
    return ((plan.sum(2) - log_a.exp()).abs() * mask_a).sum(1)


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.01])
def test_scaling_domain_gives_the_log_domain_iterates(eps, gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(5, 6, 7, gen)
    for iterations in (1, 7, 60):
        log = sinkhorn(cost, log_a, log_b, mask_a, mask_b, eps, iterations)
        scaling = sinkhorn(cost, log_a, log_b, mask_a, mask_b, eps, iterations, domain="scaling")
        torch.testing.assert_close(scaling.plan, log.plan, atol=1e-12, rtol=1e-9)
        assert scaling.marginal_error == pytest.approx(log.marginal_error, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("domain", ["log", "scaling"])
def test_tolerance_stops_each_problem_once_its_marginal_is_met(domain, gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(6, 6, 7, gen)
    result = sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.05, 5000, tolerance=1e-6, domain=domain)
    errors = row_l1_error(result.plan, log_a, mask_a)
    assert result.converged and result.iterations < 5000
    assert float(errors.max()) <= 1e-6
    assert result.marginal_error == pytest.approx(float(errors.max()), rel=1e-6)
    # Converged plans agree with POT run to convergence (its own stopping threshold).
    for b in range(6):
        a, bb = log_a[b][mask_a[b]].exp().numpy(), log_b[b][mask_b[b]].exp().numpy()
        sub = cost[b][mask_a[b]][:, mask_b[b]].numpy()
        ref = ot.sinkhorn(a, bb, sub, 0.05, method="sinkhorn_log", numItermax=100000, stopThr=1e-9)
        torch.testing.assert_close(result.plan[b][mask_a[b]][:, mask_b[b]], torch.from_numpy(ref), atol=1e-5, rtol=0)
    # Each problem stops on its own: solving it alone gives the same plan.
    alone = sinkhorn(
        cost[2:3], log_a[2:3], log_b[2:3], mask_a[2:3], mask_b[2:3], 0.05, 5000, tolerance=1e-6, domain=domain
    )
    torch.testing.assert_close(alone.plan[0], result.plan[2], atol=1e-12, rtol=0)


def test_a_capped_run_reports_its_error_and_no_convergence(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(4, 6, 7, gen)
    result = sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.01, 3, tolerance=1e-3, domain="scaling")
    errors = row_l1_error(result.plan, log_a, mask_a)
    assert result.iterations == 3 and not result.converged
    assert result.marginal_error == pytest.approx(float(errors.max()), rel=1e-6) and result.marginal_error > 1e-3


def test_scaling_domain_underflow_falls_back_to_the_log_domain_with_finite_gradients(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(4, 6, 7, gen, dtype=torch.float32)
    cost.requires_grad_(True)
    result = sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.003, 200, domain="scaling")
    log = sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.003, 200)
    assert result.fallback > 0  # ε far below the cost spread: exp(−C/ε) underflows fp32
    torch.testing.assert_close(result.plan, log.plan, atol=1e-6, rtol=0)
    result.plan.sum().backward()
    assert bool(torch.isfinite(cost.grad).all())
    # At a comfortable ε nothing falls back.
    assert sinkhorn(cost.detach(), log_a, log_b, mask_a, mask_b, 0.1, 50, domain="scaling").fallback == 0


def test_scaling_domain_gradients_match_the_log_domain(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(3, 5, 6, gen)
    grads = []
    for domain in ("log", "scaling"):
        c = cost.clone().requires_grad_(True)
        plan = sinkhorn(c, log_a, log_b, mask_a, mask_b, 0.1, 40, tolerance=1e-8, domain=domain).plan
        (plan * torch.linspace(0, 1, 6, dtype=plan.dtype)).sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-9, rtol=1e-7)


def test_bad_tolerance_and_domain_are_named(gen):
    cost, log_a, log_b, mask_a, mask_b = random_problems(2, 3, 3, gen)
    with pytest.raises(ConfigError, match="tolerance"):
        sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.1, 3, tolerance=-1.0)
    with pytest.raises(ConfigError, match="domain"):
        sinkhorn(cost, log_a, log_b, mask_a, mask_b, 0.1, 3, domain="linear")

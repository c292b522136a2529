"""The converged solver (sweeps + Newton, kernels/sinkhorn_newton.py) and its implicit score gradient
(kernels/sinkhorn_implicit.converged_flow_scores): plans within tolerance and equal to POT's and to
the plain solver's converged plans, each problem independent of its batch, and gradients equal to
the unrolled solver's in float64 — on padded problems, in both memory layouts, through the CG,
direct (Newton) and log-domain fallback paths."""

import numpy as np
import ot
import pytest
import torch

import finealign.kernels.sinkhorn_implicit as implicit
import finealign.kernels.sinkhorn_newton as newton
from finealign.kernels.sinkhorn import sinkhorn
from finealign.kernels.sinkhorn_implicit import converged_flow_scores
from finealign.kernels.sinkhorn_newton import converged_scalings


def flow_problems(batch, n, m, generator, dtype=torch.float64, spread=1.0, junk=7.0):
    """Similarities in [-spread/2, spread/2] (a few pairs strongly structured, like matching pairs),
    random positive marginals on random never-empty masks; padded similarities hold `junk`."""
    sim = spread * (torch.rand(batch, n, m, generator=generator, dtype=torch.float64) - 0.5)
    sim[::3] += 0.5 * spread * torch.eye(n, m, dtype=torch.float64)  # a diagonal match: slow to converge
    mask_a = torch.rand(batch, n, generator=generator) < 0.8
    mask_b = torch.rand(batch, m, generator=generator) < 0.8
    mask_a[:, 0] = mask_b[:, -1] = True
    mask_b[1, :-1] = False  # a one-word caption
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    sim = torch.where(valid, sim, junk)  # finite junk on padding: it must not reach any plan
    log_a = torch.log_softmax(
        torch.randn(batch, n, generator=generator, dtype=torch.float64).masked_fill(~mask_a, -torch.inf), 1
    )
    log_b = torch.log_softmax(
        torch.randn(batch, m, generator=generator, dtype=torch.float64).masked_fill(~mask_b, -torch.inf), 1
    )
    return sim.to(dtype), log_a.to(dtype), log_b.to(dtype), mask_a, mask_b


def row_error(plan, log_a, mask_a):
    return ((plan.sum(2) - log_a.exp().masked_fill(~mask_a, 0)).abs()).sum(1)


@pytest.mark.parametrize("eps", [0.1, 0.03])
def test_converged_plans_meet_the_tolerance_and_equal_pots(eps, gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(7, 6, 5, gen)
    solved = converged_scalings(sim, log_a, log_b, mask_a, mask_b, eps, 2000, 1e-10)
    plan = solved.plan()
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    assert solved.converged and bool((plan[~valid] == 0).all())
    assert float(row_error(plan, log_a, mask_a).max()) <= 1e-10
    torch.testing.assert_close(plan.sum(1), log_b.exp().masked_fill(~mask_b, 0), atol=1e-12, rtol=0)
    assert bool(solved.newton.any()), "the structured pairs should have taken Newton steps"
    for p in range(len(sim)):
        a, b = log_a[p][mask_a[p]].exp().numpy(), log_b[p][mask_b[p]].exp().numpy()
        cost = (1 - sim[p])[mask_a[p]][:, mask_b[p]].numpy()
        ref = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=200_000, stopThr=1e-13)
        torch.testing.assert_close(plan[p][mask_a[p]][:, mask_b[p]], torch.from_numpy(ref), atol=1e-8, rtol=0)


def test_newton_needs_far_fewer_iterations_than_plain_sinkhorn(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(6, 7, 6, gen, spread=1.5)
    fast = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.03, 5000, 1e-8)
    plain = sinkhorn(1 - sim, log_a, log_b, mask_a, mask_b, 0.03, 50_000, tolerance=1e-8, domain="scaling")
    assert fast.converged and plain.converged
    assert fast.iterations * 5 < plain.iterations
    torch.testing.assert_close(fast.plan(), plain.plan, atol=1e-7, rtol=0)


def test_each_problem_is_solved_as_if_alone(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(6, 6, 5, gen)
    batch = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.05, 1000, 1e-6).plan()
    for p in (0, 1, 3):  # a Newton pair, a one-word caption, a fast pair
        one = slice(p, p + 1)
        alone = converged_scalings(sim[one], log_a[one], log_b[one], mask_a[one], mask_b[one], 0.05, 1000, 1e-6)
        torch.testing.assert_close(alone.plan()[0], batch[p], atol=1e-12, rtol=0)


def test_a_transposed_layout_and_a_range_bound_change_nothing(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(5, 6, 4, gen)
    sim = sim.masked_fill(~(mask_a[:, :, None] & mask_b[:, None, :]), 0.0)  # a bound covers every entry
    ref = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.05, 1000, 1e-7)
    stored_transposed = sim.transpose(1, 2).contiguous().transpose(1, 2)
    got = converged_scalings(
        stored_transposed, log_a, log_b, mask_a, mask_b, 0.05, 1000, 1e-7, bound=float(sim.abs().max() / 0.05)
    )
    torch.testing.assert_close(got.plan(), ref.plan(), atol=1e-13, rtol=0)
    assert (got.iterations, got.marginal_error) == pytest.approx((ref.iterations, ref.marginal_error), abs=1e-14)


def test_a_capped_run_reports_its_error(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(4, 6, 5, gen)
    capped = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.02, 3, 1e-9)
    assert capped.iterations == 3 and not capped.converged
    assert capped.marginal_error == pytest.approx(float(row_error(capped.plan(), log_a, mask_a).max()), rel=1e-9)


def test_underflowing_problems_are_solved_in_the_log_domain(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(4, 6, 5, gen, dtype=torch.float32, spread=2.0)
    solved = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.01, 3000, 1e-4)  # spread/ε ≫ fp32's range
    ref = sinkhorn(1 - sim, log_a, log_b, mask_a, mask_b, 0.01, 3000, tolerance=1e-4, domain="log")
    assert solved.fallback == 4 and solved.converged
    torch.testing.assert_close(solved.plan(), ref.plan, atol=1e-6, rtol=0)


def _score_grads(solve, sim, za, zb, mask_a, mask_b, weights, eps):
    leaves = [x.clone().requires_grad_() for x in (sim, za, zb)]
    log_a = torch.log_softmax(leaves[1].masked_fill(~mask_a, -torch.inf), 1)
    log_b = torch.log_softmax(leaves[2].masked_fill(~mask_b, -torch.inf), 1)
    scores = solve(leaves[0], log_a, log_b, eps)
    return scores.detach(), torch.autograd.grad((scores * weights).sum(), leaves)


def _unrolled(sim, log_a, log_b, mask_a, mask_b, eps):
    plan = sinkhorn(1 - sim, log_a, log_b, mask_a, mask_b, eps, 100_000, tolerance=1e-13, domain="log").plan
    return (plan * sim.masked_fill(~(mask_a[:, :, None] & mask_b[:, None, :]), 0)).sum((1, 2))


@pytest.mark.parametrize("eps, layout, junk", [(0.1, "rows", 7.0), (0.05, "columns", 7.0), (0.05, "rows", 100.0)],
                         ids=["cg", "newton-transposed", "log-fallback"])  # fmt: skip
def test_score_gradients_equal_the_converged_unrolled_ones(eps, layout, junk, gen, monkeypatch):
    """Gradients in sim, log_a and log_b (through log_softmax) of Σ w·score; ε = 0.05 has Newton
    pairs (direct solves) and sweep pairs (CG); padding of 100 spans more than the exponent range
    of the scaling domain, so every pair goes to the log domain (the range check is conservative)."""
    sim, za, zb, mask_a, mask_b = flow_problems(6, 6, 5, gen, junk=junk)
    za, zb = (
        torch.randn(6, 6, generator=gen, dtype=torch.float64),
        torch.randn(6, 5, generator=gen, dtype=torch.float64),
    )
    weights = torch.randn(6, generator=gen, dtype=torch.float64)
    solvers = []
    monkeypatch.setattr(
        implicit, "_solve_schur", lambda s, r, d, f=implicit._solve_schur: solvers.append(d) or f(s, r, d)
    )

    def fast(s, log_a, log_b, e):
        if layout == "columns":
            s = s.transpose(1, 2).contiguous().transpose(1, 2)
        return converged_flow_scores(s, log_a, log_b, mask_a, mask_b, e, 20_000, 1e-12)[0]

    got = _score_grads(fast, sim, za, zb, mask_a, mask_b, weights, eps)
    ref = _score_grads(
        lambda s, a, b, e: _unrolled(s, a, b, mask_a, mask_b, e), sim, za, zb, mask_a, mask_b, weights, eps
    )
    torch.testing.assert_close(got[0], ref[0], atol=1e-10, rtol=0)
    for name, g, r in zip(("sim", "log_a", "log_b"), got[1], ref[1], strict=True):
        torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-6, msg=name)
    direct = solvers[0]
    assert bool(direct.all()) if junk == 100.0 else bool(direct.any()) and not bool(direct.all())


def test_score_gradcheck(gen):
    sim, _, _, mask_a, mask_b = flow_problems(3, 4, 3, gen)
    za, zb = (
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
        torch.randn(3, 3, generator=gen, dtype=torch.float64),
    )

    def fn(s, a, b):
        log_a, log_b = (
            torch.log_softmax(a.masked_fill(~mask_a, -torch.inf), 1),
            torch.log_softmax(b.masked_fill(~mask_b, -torch.inf), 1),
        )
        return converged_flow_scores(s, log_a, log_b, mask_a, mask_b, 0.1, 20_000, 1e-13)[0]

    assert torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_() for x in (sim, za, zb)), atol=1e-6)


def test_inference_scores_equal_the_plan_scores_and_leave_the_inputs_alone(gen):
    sim, log_a, log_b, mask_a, mask_b = flow_problems(5, 6, 5, gen)
    before = sim.clone()
    with torch.no_grad():
        scores, report = converged_flow_scores(sim, log_a, log_b, mask_a, mask_b, 0.05, 1000, 1e-8)
    plan = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.05, 1000, 1e-8).plan()
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    torch.testing.assert_close(scores, (plan * sim.masked_fill(~valid, 0)).sum((1, 2)), atol=1e-12, rtol=0)
    assert torch.equal(sim, before) and report.converged and report.marginal_error <= 1e-8


def test_the_newton_line_search_recovers_from_a_useless_direction(gen, monkeypatch):
    """A direction that is no ascent direction is never accepted: the step becomes a plain sweep
    and the solver still converges (to the same plan)."""
    sim, log_a, log_b, mask_a, mask_b = flow_problems(4, 6, 5, gen)
    ref = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.05, 5000, 1e-6).plan()
    original = newton._NewtonSystem.direction
    monkeypatch.setattr(
        newton._NewtonSystem, "direction", lambda self, v, kv: (lambda g, d: (g, -d))(*original(self, v, kv))
    )
    got = converged_scalings(sim, log_a, log_b, mask_a, mask_b, 0.05, 5000, 1e-6)
    assert got.converged and bool(got.newton.any())
    np.testing.assert_allclose(got.plan().numpy(), ref.numpy(), atol=1e-5)

"""Sinkhorn with implicit differentiation: the plan's gradient from the optimality conditions,
not from the unrolled iterations.

Unrolling differentiates every Sinkhorn iterate: the backward pass costs as much as the forward
and autograd keeps (or recomputes) every iterate of every pair. At the solution, though, the plan
is a function of (C, a, b) alone. Write P_ij = exp((f_i + g_j − C_ij)/ε) with the potentials
fixed by the marginal conditions P1 = a, Pᵀ1 = b. Differentiating those conditions,

    [diag(a)  P      ] [df]   [ε da + (P⊙dC) 1 ]
    [Pᵀ       diag(b)] [dg] = [ε db + (P⊙dC)ᵀ 1],        dP = P ⊙ (df ⊕ dg − dC) / ε.

For an upstream gradient G = ∂L/∂P let W = G ⊙ P / ε and solve H [x; y] = [W 1; Wᵀ 1] with the
(symmetric) matrix H above. Then

    ∂L/∂C = P ⊙ (x ⊕ y) − W,    ∂L/∂a = ε x,    ∂L/∂b = ε y.

H is singular along (1, −1) (adding a constant to f and subtracting it from g changes nothing);
the right-hand side is orthogonal to that direction, so H + n nᵀ (n = (1, −1) on real tokens) is
solved instead (as its n×n Schur complement after eliminating y). Padded rows/columns are
decoupled (unit diagonal, zero right-hand side). The forward pass runs the solver without
autograd; the backward pass is one batched n×n solve per problem (n = regions), in float64.

The gradient is exact at the optimum; a plan stopped at marginal tolerance τ gives gradients
within O(τ) of it (the tests compare with the unrolled solver run to 1e-10). One-sided OT
(`log_a=None`) has a closed form and is left to ordinary autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.kernels.sinkhorn import SinkhornResult, sinkhorn

_RIDGE = 1e-12


class _ImplicitPlan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, log_a, log_b, plan, mask_a, mask_b, epsilon):
        ctx.save_for_backward(plan, log_a, log_b, mask_a, mask_b)
        ctx.epsilon = epsilon
        return plan.clone()

    @staticmethod
    def backward(ctx, grad_plan):
        plan, log_a, log_b, mask_a, mask_b = ctx.saved_tensors
        eps = ctx.epsilon
        # Elementwise work in the plan's dtype (≥ fp32); the Schur system is formed and solved in fp64.
        p = plan if plan.dtype != torch.float16 and plan.dtype != torch.bfloat16 else plan.float()
        grad = grad_plan.to(p.dtype)
        w = grad * p / eps
        r1, r2 = w.sum(2), w.sum(1)  # (B, n), (B, m)
        a = torch.where(mask_a, p.sum(2), torch.ones_like(r1))  # padded tokens: decoupled unit rows
        b = torch.where(mask_b, p.sum(1), torch.ones_like(r2))
        # Eliminate y (y = (r2 − Pᵀx) / b): the n×n Schur complement A = diag(a) − P diag(1/b) Pᵀ,
        # singular along x = 1 on real rows; + 1 1ᵀ/n_real removes that direction (r ⟂ it).
        pb = p / b[:, None, :]
        schur = -(pb @ p.transpose(1, 2)).double()
        a64 = a.double()
        ones = mask_a.to(schur.dtype)
        schur += ones[:, :, None] * ones[:, None, :] / ones.sum(1, keepdim=True)[:, :, None]
        # At tiny ε the plan's support can split into blocks (entries underflow to 0): each block
        # adds a null direction, also orthogonal to the right-hand side. A ridge far below every
        # real entry keeps the solve defined and picks the minimum-norm solution there.
        schur.diagonal(dim1=1, dim2=2).add_(a64 + _RIDGE * a64.amax(1, keepdim=True))
        rhs = (r1 - (pb * r2[:, None, :]).sum(2)).masked_fill(~mask_a, 0.0).double()
        x = torch.linalg.solve(schur, rhs).to(p.dtype)
        y = ((r2 - (p * x[:, :, None]).sum(1)) / b).masked_fill(~mask_b, 0.0)
        grad_cost = (p * (x[:, :, None] + y[:, None, :]) - w).to(grad_plan.dtype)
        grad_log_a = (eps * x * torch.exp(log_a.to(p.dtype)).masked_fill(~mask_a, 0)).to(log_a.dtype)
        grad_log_b = (eps * y * torch.exp(log_b.to(p.dtype)).masked_fill(~mask_b, 0)).to(log_b.dtype)
        return grad_cost, grad_log_a, grad_log_b, None, None, None, None


def implicit_sinkhorn(
    cost: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    epsilon: float,
    iterations: int,
    *,
    tolerance: float = 0.0,
    domain: str = "log",
) -> SinkhornResult:
    """`sinkhorn` (two-sided) whose plan is differentiated implicitly (see the module docstring):
    the iterations run without autograd, so training keeps no iterates and needs no recompute."""
    with torch.no_grad():
        solved = sinkhorn(cost.detach(), log_a.detach(), log_b.detach(), mask_a, mask_b, epsilon, iterations,
                          tolerance=tolerance, domain=domain)  # fmt: skip
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (cost, log_a, log_b)):
        return solved
    # padded marginal entries may be -inf: the backward reads them only where the mask is real
    log_a = torch.where(mask_a, log_a, torch.zeros((), dtype=log_a.dtype, device=log_a.device))
    log_b = torch.where(mask_b, log_b, torch.zeros((), dtype=log_b.dtype, device=log_b.device))
    plan = _ImplicitPlan.apply(cost, log_a, log_b, solved.plan, mask_a, mask_b, epsilon)
    return SinkhornResult(plan, solved.iterations, solved.marginal_error, solved.converged, solved.fallback)

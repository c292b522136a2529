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

`converged_flow_scores` applies the same conditions to TokenFlow's score Σ P ⊙ S directly (the
plan from kernels/sinkhorn_newton.py, P = diag(u) K diag(v)): one backward pass gives the
gradients in S, log a and log b, every product with P taken as a batched product with K (no plan
is formed), the Schur complement eliminated onto the columns (the words: the smaller side), and
its systems solved by Jacobi-preconditioned conjugate gradients for the pairs that converged in
sweeps (well conditioned: a few steps) and by a float64 solve for the slow ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.kernels.sinkhorn import SinkhornResult, sinkhorn
from finealign.kernels.sinkhorn_newton import SolveReport, columns_major, converged_scalings, vec_mat

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


# -- the flow score Σ P ⊙ S of converged plans (kernels/sinkhorn_newton.py) -------------------------

#: Schur systems of problems that converged in few sweeps are well conditioned: conjugate gradients
#: (batched vector–matrix products) solve them in a few steps; a problem that needs more than this
#: many, and every problem that took Newton steps, is solved directly instead.
_CG_STEPS = 24


def converged_flow_scores(
    sim: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    epsilon: float,
    iterations: int,
    tolerance: float,
    bound: float | None = None,
) -> tuple[Tensor, SolveReport]:
    """((B,) Σ P ⊙ S, how the solver did) for the converged flow between similarities `sim`
    (B, n, m; cost c₀ − S; finite, see `converged_scalings` for padding and layout) and the
    marginals exp(log_a), exp(log_b): solved by `converged_scalings` to `tolerance`,
    differentiated implicitly in sim, log_a and log_b (module docstring) in one backward pass.
    `bound`: see `converged_scalings`."""
    solved = converged_scalings(sim.detach(), log_a.detach(), log_b.detach(), mask_a, mask_b, epsilon, iterations,
                                tolerance, bound)  # fmt: skip
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (sim, log_a, log_b))):
        return solved.scores(sim, in_place=True), solved.report  # nothing to keep for a backward pass
    return _FlowScores.apply(sim, log_a, log_b, solved, mask_a, mask_b, epsilon), solved.report


class _FlowScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sim, log_a, log_b, solved, mask_a, mask_b, epsilon):
        weighted = solved.weighted_kernel(sim)
        ctx.solved, ctx.epsilon = solved, epsilon
        ctx.save_for_backward(sim, weighted, log_a, log_b, mask_a, mask_b)
        return solved.scores(sim, weighted)

    @staticmethod
    def backward(ctx, grad_scores):
        """The implicit gradient (module docstring) written with K, u, v instead of the plan
        P = diag(u) K diag(v): every product with P is a batched vector–matrix product with K, and
        the only full-size passes are the Schur complement's and the gradient's own."""
        sim, weighted, log_a, log_b, mask_a, mask_b = ctx.saved_tensors
        solved, eps = ctx.solved, ctx.epsilon
        k_rows, k_cols, u, v = solved.kernel_rows, solved.kernel_cols, solved.u, solved.v
        g = grad_scores.to(u.dtype)
        # P 1 and Pᵀ 1; 1 where a token carries no mass (padding), which decouples it.
        rows, cols = u * vec_mat(v, k_cols), v * vec_mat(u, k_rows)
        rows, cols = torch.where(rows > 0, rows, 1.0), torch.where(cols > 0, cols, 1.0)
        # W = g·S ⊙ P / ε (the upstream gradient of P is g·S); r1 = W 1, r2 = Wᵀ 1.
        ks_rows_v, ks_cols_u = _both_products(weighted, u, v)
        r1 = (g / eps)[:, None] * u * ks_rows_v
        r2 = (g / eps)[:, None] * v * ks_cols_u
        # Eliminate x = (r1 − P y) / rows: the m×m Schur complement diag(cols) − Pᵀ diag(1/rows) P
        # in y (words: the smaller side), with Pᵀ diag(1/rows) P = diag(v) Kᵀ diag(u²/rows) K diag(v).
        gram = torch.bmm(k_cols * (u * u / rows)[:, None, :], k_rows)
        schur = -(v[:, :, None] * gram * v[:, None, :])
        real = mask_b.to(schur.dtype)
        count = real.sum(1).clamp_min(1.0)
        schur += real[:, :, None] * real[:, None, :] / count.square()[:, None, None]  # the shift's null direction
        schur.diagonal(dim1=1, dim2=2).add_(cols)
        rhs = (r2 - v * vec_mat(u * r1 / rows, k_rows)).masked_fill(~mask_b, 0.0)
        y = _solve_schur(schur, rhs, solved.newton | solved.fallback_mask)
        x = ((r1 - u * vec_mat(v * y, k_cols)) / rows).masked_fill(~mask_a, 0.0)
        # The solutions form a line (x + t, y − t); take Σ_real x = 0, as _ImplicitPlan does.
        shift = x.sum(1, keepdim=True) / mask_a.sum(1, keepdim=True).clamp_min(1)
        x, y = (x - shift).masked_fill(~mask_a, 0.0), (y + shift).masked_fill(~mask_b, 0.0)
        grad_sim = _score_gradient(solved.kernel_like(sim), sim, u, v, g, x, y, eps)
        grad_log_a = (eps * x * torch.exp(log_a.to(u.dtype)).masked_fill(~mask_a, 0)).to(log_a.dtype)
        grad_log_b = (eps * y * torch.exp(log_b.to(u.dtype)).masked_fill(~mask_b, 0)).to(log_b.dtype)
        return grad_sim.to(sim.dtype), grad_log_a, grad_log_b, None, None, None, None


def _both_products(weighted: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """((K⊙S) v, (K⊙S)ᵀ u) for K⊙S (B, n, m) in either memory layout: one product in the fast
    vector–matrix form, the other as a multiply-sum over the contiguous axis."""
    if columns_major(weighted):
        stored = weighted.transpose(1, 2)  # (B, m, n) contiguous
        return vec_mat(v, stored), (stored * u[:, None, :]).sum(2)
    return (weighted * v[:, None, :]).sum(2), vec_mat(u, weighted)


def _score_gradient(kernel: Tensor, sim: Tensor, u, v, g, x, y, eps: float) -> Tensor:
    """∂score/∂S = g·P − ∂L/∂C = P ⊙ (g − x_i − y_j + g·S_ij/ε)  (C = c₀ − S), as
    (u_i (g − x_i) + u_i (g/ε) S_ij − u_i y_j) · K_ij · v_j: four full-size passes, in the memory
    layout of `kernel` (symmetric in (u, x) ↔ (v, y), so a transposed layout is the same formula
    on the transposes)."""
    if columns_major(kernel):
        return _score_gradient(kernel.transpose(1, 2), sim.transpose(1, 2), v, u, g, y, x, eps).transpose(1, 2)
    grad = torch.addcmul((u * (g[:, None] - x))[:, :, None], sim, ((g / eps)[:, None] * u)[:, :, None])
    grad.addcmul_(u[:, :, None], y[:, None, :], value=-1.0)
    return grad.mul_(kernel).mul_(v[:, None, :])


def _solve_schur(schur: Tensor, rhs: Tensor, direct: Tensor) -> Tensor:
    """y with schur y = rhs per problem (symmetric positive definite): Jacobi-preconditioned
    conjugate gradients on the problems not marked `direct`, a float64 solve for the rest and for
    those CG leaves above its tolerance."""
    dtype = schur.dtype
    # Relative residual 4·eps^(2/3): 1e-4 in float32 (far below the O(tolerance) error of a
    # converged plan's gradient), 1.5e-10 in float64.
    rtol = 4 * torch.finfo(dtype).eps ** (2 / 3)
    diag = schur.diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(dtype).tiny)
    y = torch.zeros_like(rhs)
    residual = rhs.clone()
    target = rtol * rhs.norm(dim=1)
    active = ~direct & (residual.norm(dim=1) > target)
    z = residual / diag
    search = z.clone()
    rz = (residual * z).sum(1)
    for _ in range(_CG_STEPS):
        if not bool(active.any()):
            break
        product = torch.bmm(search[:, None, :], schur)[:, 0]  # symmetric: row-vector layout is the fast one
        curvature = (search * product).sum(1)
        alpha = torch.where(active & (curvature > 0), rz / curvature.clamp_min(torch.finfo(dtype).tiny), 0.0)
        y += alpha[:, None] * search
        residual -= alpha[:, None] * product
        active &= residual.norm(dim=1) > target
        z = residual / diag
        rz_next = (residual * z).sum(1)
        beta = torch.where(active & (rz > 0), rz_next / rz.clamp_min(torch.finfo(dtype).tiny), 0.0)
        search = z + beta[:, None] * search
        rz = rz_next
    hard = (direct | active).nonzero().flatten()
    if len(hard):
        system = schur[hard].double()
        system.diagonal(dim1=1, dim2=2).add_(_RIDGE * system.diagonal(dim1=1, dim2=2).amax(1, keepdim=True))
        y[hard] = torch.linalg.solve(system, rhs[hard].double()).to(dtype)
    return y

"""Converged entropic OT for a batch of small problems: Sinkhorn sweeps, then Newton steps on the
problems that converge slowly. No autograd: the plan is differentiated implicitly
(kernels/sinkhorn_implicit.py), so only the fixed point matters, not the road to it.

The problem is kernels/sinkhorn.py's two-sided one with cost C = c₀ − S (TokenFlow: 1 − S; the
constant does not change the plan), solved in the scaling domain with the kernel
K_ij = exp((S_ij − max_j S_ij)/ε) formed once per problem and kept in both layouts, so that each
half-sweep is a batched vector–matrix product.

1. Sweeps: u ← a / (K v), v ← b / (Kᵀ u) on every problem at once. After each sweep the columns
   are exact and a problem whose row-marginal L1 error is within `tolerance` is finished: its
   scalings are recorded (it keeps sweeping with the others, harmlessly, until the phase ends —
   gathering the survivors would copy the kernel for little gain).
2. Newton: problems still above tolerance after `NEWTON_AFTER` sweeps are gathered and take
   Newton steps on the semi-dual Φ(log v) = Σ_j b_j log v_j − Σ_i a_i log (K v)_i (rows solved
   exactly for v), whose Hessian is the m×m Schur complement −(diag(c) − Pᵀ diag(1/a) P). Φ is
   concave, so Armijo backtracking always finds a step (a step that cannot be found leaves a plain
   sweep). Each step is followed by one sweep, which makes the columns exact again and measures
   the error. Sinkhorn's rate degrades as ε shrinks against the cost spread (the matching pairs
   of a retrieval batch: 25–125 sweeps at ε = 0.05 on benchmarks/sinkhorn_cpu.py's inputs);
   Newton converges quadratically near the solution (3–5 steps there).
3. A problem whose kernel spans more than the dtype's exponent range (ε small against its
   similarity spread), or whose sums underflow, is solved by the log-domain Sinkhorn of
   kernels/sinkhorn.py instead.

Every decision — when a problem stops, whether it takes Newton steps, its step lengths — is the
problem's own, so a plan never depends on the other problems of its batch. Each sweep and each
Newton step (with its sweep) counts as one iteration against `iterations`. The plan differs from
plain Sinkhorn's at the same tolerance by O(tolerance): both are within it of the exact optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from finealign.kernels.sinkhorn import _SCALING_RANGE, sinkhorn

#: plain sweeps before a problem still above tolerance switches to Newton steps (at ε = 0.05 on
#: trained-like tokens ~90 % of pairs are within 1e-3 after 6 sweeps; the rest are slow ones)
NEWTON_AFTER = 6
#: step halvings of the Armijo line search before a Newton step gives way to a plain sweep
_HALVINGS = 12
_ARMIJO = 1e-4
#: keeps the Newton system solvable where the plan's support splits into blocks (tiny entries)
_RIDGE = 1e-12


@dataclass(frozen=True)
class ConvergedScalings:
    """The solved batch: plan = u_i K_ij v_j, except the `fallback_index` problems, whose plans
    (from the log domain) are `fallback_plan`.

    kernel_rows (B, n, m) and kernel_cols (B, m, n): K in both layouts, each contiguous. u (B, n)
    and v (B, m), 0 on padding. newton (B,) bool: the problem took Newton steps (slow to converge,
    so the backward solves its linear system directly). iterations: the most any problem ran;
    marginal_error: the largest row-marginal L1 error; converged: every problem met the tolerance.
    """

    kernel_rows: Tensor
    kernel_cols: Tensor
    u: Tensor
    v: Tensor
    newton: Tensor
    fallback_index: Tensor
    fallback_plan: Tensor
    iterations: int
    marginal_error: float
    converged: bool

    @property
    def fallback(self) -> int:
        """How many problems the log domain solved."""
        return len(self.fallback_index)

    def kernel_like(self, like: Tensor) -> Tensor:
        """(B, n, m) K in the memory layout of `like`, so elementwise work with it runs contiguously."""
        return self.kernel_cols.transpose(1, 2) if _columns_major(like) else self.kernel_rows

    def plan(self, like: Tensor | None = None) -> Tensor:
        """(B, n, m) transport plans (exactly 0 on padded rows and columns), laid out like `like`."""
        kernel = self.kernel_rows if like is None else self.kernel_like(like)
        plan = kernel * self.u[:, :, None] * self.v[:, None, :]
        if self.fallback:
            plan = plan.index_put((self.fallback_index,), self.fallback_plan)
        return plan

    def scores(self, sim: Tensor) -> Tensor:
        """(B,) Σ plan ⊙ sim (sim finite), without forming the plan: uᵀ (K ⊙ S) v."""
        if _columns_major(sim):
            weighted = self.kernel_cols * sim.transpose(1, 2)
            scores = (_vec_mat(self.v, weighted) * self.u).sum(1)
        else:
            scores = (_vec_mat(self.u, self.kernel_rows * sim) * self.v).sum(1)
        if self.fallback:
            scores[self.fallback_index] = (self.fallback_plan * sim[self.fallback_index]).sum((1, 2))
        return scores


def _columns_major(x: Tensor) -> bool:
    """Whether (B, n, m) `x` is stored as its transpose (B, m, n) contiguous."""
    return not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def _vec_mat(x: Tensor, matrix: Tensor) -> Tensor:
    """(B, k) · (B, k, l) → (B, l): the batched product whose layout is fast on CPU BLAS (a
    vector times a matrix stored row-major; the matrix times a vector is 3–5× slower)."""
    return torch.bmm(x[:, None, :], matrix)[:, 0]


def _row_error(row_sums: Tensor, a: Tensor) -> Tensor:
    """(B,) Σ_i |row_sum_i − a_i| (a and the row sums are 0 on padded rows)."""
    return (row_sums - a).abs().sum(1)


def converged_scalings(
    sim: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    epsilon: float,
    iterations: int,
    tolerance: float,
) -> ConvergedScalings:
    """Solve the flow problems of similarities `sim` (B, n, m) to `tolerance` (module docstring).

    sim: finite everywhere; entries of padded rows/columns never reach a plan (0 there, as the
    products of prepared tokens give, keeps the kernel's range tight). It may be stored as its
    transpose (B, m, n): the kernel is then built in that layout and copied once to the other.
    log_a (B, n) / log_b (B, m): log marginals (each sums to 1 over real tokens; padding ignored);
    masks True on real tokens. Runs without autograd.
    """
    with torch.no_grad():
        return _solve(sim, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance)


def _kernel(sim: Tensor, epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """(K rows-major, K columns-major, risky (B,) bool). K = exp(S/ε), shifted by the problem's
    largest entry only where exp would overflow (the shift is absorbed by u, so it changes nothing
    but range; deciding per problem keeps each problem's kernel independent of its batch). A
    problem whose entries span more than the dtype's exponent range is risky: the log domain
    solves it."""
    base = sim.transpose(1, 2) if _columns_major(sim) else sim.contiguous()
    scaled = base if epsilon == 1.0 else base / epsilon
    high, low = scaled.amax((1, 2)), scaled.amin((1, 2))
    log_max = math.log(torch.finfo(sim.dtype).max)
    risky = (high - low) > _SCALING_RANGE * -math.log(torch.finfo(sim.dtype).tiny)
    log_tiny = math.log(torch.finfo(sim.dtype).tiny)
    out_of_range = (high > 0.9 * log_max) | (low < 0.9 * log_tiny)
    shift = torch.where(out_of_range, high, torch.zeros_like(high))
    kernel = (scaled - shift[:, None, None]).exp_() if bool((shift != 0).any()) else scaled.exp()
    other = kernel.transpose(1, 2).contiguous()
    return (other, kernel, risky) if base is not sim else (kernel, other, risky)


def _solve(sim, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance) -> ConvergedScalings:
    batch = sim.shape[0]
    dtype, device = sim.dtype, sim.device
    zero = torch.zeros((), dtype=dtype, device=device)
    if batch:
        kernel_rows, kernel_cols, risky = _kernel(sim, epsilon)
    else:
        kernel_rows, kernel_cols = sim.new_zeros(sim.shape), sim.new_zeros(0, *sim.shape[:0:-1])
        risky = torch.zeros(0, dtype=torch.bool, device=device)
    a = torch.where(mask_a, log_a.exp(), zero)
    b = torch.where(mask_b, log_b.exp(), zero)
    # Padding has mass 0; adding 1 to its denominators makes its scaling exactly 0 (never 0/0).
    pad_a, pad_b = (~mask_a).to(dtype), (~mask_b).to(dtype)

    u_out, v_out = torch.zeros_like(a), torch.zeros_like(b)
    error = torch.zeros(batch, dtype=dtype, device=device)
    ran = torch.zeros(batch, dtype=torch.long, device=device)
    broken = torch.zeros(batch, dtype=torch.bool, device=device)
    newton = torch.zeros(batch, dtype=torch.bool, device=device)
    # The working set: problems still sweeping. Finished ones stay in it (their results are
    # recorded) until half of it has finished; then the rest is gathered, so later sweeps read
    # only their kernels.
    work = torch.arange(batch, device=device)
    state = [kernel_rows, kernel_cols, a, b, pad_a, pad_b, mask_a, mask_b]
    if bool(risky.any()):
        work = work[~risky]
        state = [x[work] for x in state]
    k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w = state
    live = torch.ones(len(work), dtype=torch.bool, device=device)
    v = mask_b_w.to(dtype)
    kv = _vec_mat(v, k_cols)
    u = torch.zeros_like(a_w)
    done = 0
    while len(work):
        if done:
            err = _row_error(u * kv, a_w)
            bad = ~torch.isfinite(err) | ((kv <= 0) & mask_a_w).any(1)
            finished = live & (bad | (err <= tolerance) | (done >= iterations))
            if bool(finished.any()):
                index = work[finished]
                u_out[index], v_out[index], error[index] = u[finished], v[finished], err[finished]
                ran[index], broken[index] = done, bad[finished]
                live &= ~finished
            if done >= NEWTON_AFTER or not bool(live.any()):
                break
            if 2 * int(live.sum()) <= len(work):
                keep = live.nonzero().flatten()
                work, u, v, kv = work[keep], u[keep], v[keep], kv[keep]
                k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w = (
                    x[keep] for x in (k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w)
                )
                live = live[keep]
        u = a_w / (kv + pad_a_w)
        v = b_w / (_vec_mat(u, k_rows) + pad_b_w)
        kv = _vec_mat(v, k_cols)
        done += 1
    slow = live.nonzero().flatten() if len(work) else live
    if len(slow):
        index = work[slow]
        newton[index] = True
        results = _newton(k_rows[slow], k_cols[slow], a_w[slow], b_w[slow], mask_a_w[slow], mask_b_w[slow], v[slow],
                          kv[slow], done, iterations, tolerance)  # fmt: skip
        u_out[index], v_out[index], error[index], ran[index], broken[index] = results

    fallback_index = (risky | broken).nonzero().flatten()
    fallback_plan = sim.new_zeros(0, *sim.shape[1:])
    if len(fallback_index):
        f = fallback_index
        redo = sinkhorn(-sim[f], log_a[f], log_b[f], mask_a[f], mask_b[f], epsilon, iterations,
                        tolerance=tolerance, domain="log")  # fmt: skip
        fallback_plan = redo.plan
        error[f] = redo.plan.new_tensor(redo.marginal_error)
        ran[f] = redo.iterations
        u_out[f], v_out[f] = 0.0, 0.0
    worst = float(error.max()) if batch else 0.0
    return ConvergedScalings(
        kernel_rows=kernel_rows,
        kernel_cols=kernel_cols,
        u=u_out,
        v=v_out,
        newton=newton & ~broken,
        fallback_index=fallback_index,
        fallback_plan=fallback_plan,
        iterations=int(ran.max()) if batch else 0,
        marginal_error=worst,
        converged=tolerance > 0 and worst <= tolerance,
    )


def _semidual_gain(b: Tensor, a: Tensor, step: Tensor, kv_new: Tensor, kv: Tensor) -> Tensor:
    """(w,) Φ(v·exp(step)) − Φ(v) in float64, written as a difference so the large Φ values cancel
    exactly: Σ_j b_j step_j − Σ_i a_i log((K v_new)_i / (K v)_i) (0 terms on padding)."""
    ratio = torch.where(a > 0, kv_new / kv, torch.ones_like(kv)).double()
    return (b.double() * step.double()).sum(1) - (a.double() * torch.log(ratio)).sum(1)


def _newton(kernel, kernel_t, a, b, mask_a, mask_b, v, kv, done, iterations, tolerance):
    """Newton steps on the semi-dual for the gathered slow problems (module docstring, step 2).

    Returns (u, v, error, iterations run, broken) per problem. Problems leave the working set as
    they finish, so each one's steps depend on itself alone.
    """
    dtype = kernel.dtype
    count = len(a)
    pad_a, pad_b = (~mask_a).to(dtype), (~mask_b).to(dtype)
    u_out, v_out = torch.zeros_like(a), torch.zeros_like(b)
    error = torch.zeros(count, dtype=dtype, device=a.device)
    ran = torch.full((count,), done, dtype=torch.long, device=a.device)
    broken = torch.zeros(count, dtype=torch.bool, device=a.device)
    work = torch.arange(count, device=a.device)
    real_b = mask_b.double()
    while True:
        grad, direction = _newton_direction(kernel, a, b, pad_a, pad_b, real_b, v, kv)
        slope = (grad * direction.double()).sum(1)
        step_len = torch.ones(len(a), dtype=dtype, device=a.device)
        accepted = torch.zeros(len(a), dtype=torch.bool, device=a.device)
        v_new, kv_new = v, kv
        for _ in range(_HALVINGS):
            step = step_len[:, None] * direction
            v_try = v * step.exp()
            kv_try = _vec_mat(v_try, kernel_t)
            gain = _semidual_gain(b, a, step, kv_try, kv)
            ok = ~accepted & (gain >= _ARMIJO * step_len.double() * slope) & torch.isfinite(gain)
            v_new = torch.where(ok[:, None], v_try, v_new)
            kv_new = torch.where(ok[:, None], kv_try, kv_new)
            accepted |= ok
            if bool(accepted.all()):
                break
            step_len = torch.where(accepted, step_len, step_len / 2)
        # A problem without an accepted step keeps v: the sweep below is then a plain one.
        u = a / (kv_new + pad_a)
        v = b / (_vec_mat(u, kernel) + pad_b)
        kv = _vec_mat(v, kernel_t)
        done += 1
        err = _row_error(u * kv, a)
        bad = ~torch.isfinite(err) | ((kv <= 0) & mask_a).any(1)
        finished = bad | (err <= tolerance) | (done >= iterations)
        if bool(finished.any()):
            fin = work[finished]
            u_out[fin], v_out[fin], error[fin] = u[finished], v[finished], err[finished]
            ran[fin], broken[fin] = done, bad[finished]
            keep = ~finished
            if not bool(keep.any()):
                break
            work, kernel, kernel_t = work[keep], kernel[keep], kernel_t[keep]
            a, b, mask_a, mask_b, pad_a, pad_b, real_b = (x[keep] for x in (a, b, mask_a, mask_b, pad_a, pad_b, real_b))
            v, kv = v[keep], kv[keep]
    return u_out, v_out, error, ran, broken


def _newton_direction(kernel, a, b, pad_a, pad_b, real_b, v, kv) -> tuple[Tensor, Tensor]:
    """(gradient b − c in float64, Newton direction d) for log v, each (w, m): J d = b − c with J = diag(c) − Pᵀ diag(1/a) P the
    negated Hessian of the semi-dual at the plan P whose rows are exact for v. J is singular along
    1 on the real columns (the potentials' shift) and b − c is orthogonal to it, so J + 1 1ᵀ/m
    gives the same direction. Formed and solved in float64; a failed solve gives d = 0."""
    u = a / (kv + pad_a)
    plan = (kernel * u[:, :, None] * v[:, None, :]).double()
    cols = plan.sum(1)
    grad = b.double() - cols
    system = -(plan.transpose(1, 2) @ (plan / (a.double() + pad_a.double())[:, :, None]))
    system += real_b[:, :, None] * real_b[:, None, :] / real_b.sum(1).clamp_min(1.0)[:, None, None]
    diag = cols + pad_b.double()
    system.diagonal(dim1=1, dim2=2).add_(diag + _RIDGE * diag.amax(1, keepdim=True))
    direction, info = torch.linalg.solve_ex(system, grad)
    direction = torch.where((info == 0)[:, None] & torch.isfinite(direction), direction, 0.0)
    return grad, direction.to(kernel.dtype)

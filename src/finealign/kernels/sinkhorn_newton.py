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
#: benchmarks/sinkhorn_cpu.py's trained-like tokens 92 % of pairs are within 1e-3 after 4 sweeps
#: and 96.5 % after 5; the rest are slow ones, mostly the matching pairs)
NEWTON_AFTER = 5
#: step halvings of the Armijo line search before a Newton step gives way to a plain sweep
_HALVINGS = 12
#: a trust region: a Newton step moves no log-scaling by more than this (far from the solution the
#: first directions can move one by hundreds and would be backtracked many times; on the
#: benchmark's pairs at ε = 0.02 this cap takes 12 steps with 62 trials instead of 61 with 696)
_MAX_STEP = 8.0
_ARMIJO = 1e-4
#: keeps the Newton system solvable where the plan's support splits into blocks (tiny entries)
_RIDGE = 1e-12


@dataclass(frozen=True)
class SolveReport:
    """How far the solver got: the most iterations any problem ran, the largest row-marginal L1
    error, whether every problem met the tolerance, and how many the log domain solved."""

    iterations: int
    marginal_error: float
    converged: bool
    fallback: int


@dataclass(frozen=True)
class ConvergedScalings:
    """The solved batch: plan_ij = u_i K_ij v_j.

    kernel_rows (B, n, m) and kernel_cols (B, m, n): K in both layouts, each contiguous. u (B, n)
    and v (B, m), 0 on padding. A problem the log domain solved holds its plan as K (u = v = 1 on
    real tokens). newton (B,) bool: the problem took Newton steps; fallback (B,) bool: the log
    domain solved it (both converge slowly, so the backward solves their systems directly).
    iterations: the most any problem ran; marginal_error: the largest row-marginal L1 error;
    converged: every problem met the tolerance.
    """

    kernel_rows: Tensor
    kernel_cols: Tensor
    u: Tensor
    v: Tensor
    newton: Tensor
    fallback_mask: Tensor
    iterations: int
    marginal_error: float
    converged: bool

    @property
    def fallback(self) -> int:
        """How many problems the log domain solved."""
        return int(self.fallback_mask.sum())

    @property
    def report(self) -> SolveReport:
        return SolveReport(self.iterations, self.marginal_error, self.converged, self.fallback)

    def kernel_like(self, like: Tensor) -> Tensor:
        """(B, n, m) K in the memory layout of `like`, so elementwise work with it runs contiguously."""
        return self.kernel_cols.transpose(1, 2) if columns_major(like) else self.kernel_rows

    def plan(self) -> Tensor:
        """(B, n, m) transport plans, exactly 0 on padded rows and columns."""
        return self.kernel_rows * self.u[:, :, None] * self.v[:, None, :]

    def weighted_kernel(self, sim: Tensor) -> Tensor:
        """K ⊙ S (B, n, m) in the memory layout of `sim`."""
        return self.kernel_like(sim) * sim

    def scores(self, sim: Tensor, weighted: Tensor | None = None, *, in_place: bool = False) -> Tensor:
        """(B,) Σ plan ⊙ sim (sim finite), without forming the plan: uᵀ (K ⊙ S) v
        (`weighted` = `weighted_kernel(sim)` when the caller has it). in_place: form K ⊙ S in the
        kernel's own memory (no new buffer; this object's kernel is spent afterwards)."""
        if weighted is None:
            weighted = self.kernel_like(sim).mul_(sim) if in_place else self.weighted_kernel(sim)
        if columns_major(weighted):
            return (vec_mat(self.v, weighted.transpose(1, 2)) * self.u).sum(1)
        return (vec_mat(self.u, weighted) * self.v).sum(1)


def columns_major(x: Tensor) -> bool:
    """Whether (B, n, m) `x` is stored as its transpose (B, m, n) contiguous."""
    return not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def vec_mat(x: Tensor, matrix: Tensor) -> Tensor:
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
    bound: float | None = None,
) -> ConvergedScalings:
    """Solve the flow problems of similarities `sim` (B, n, m) to `tolerance` (module docstring).

    sim: finite everywhere; entries of padded rows/columns never reach a plan (0 there, as the
    products of prepared tokens give, keeps the kernel's range tight). It may be stored as its
    transpose (B, m, n): the kernel is then built in that layout and copied once to the other.
    log_a (B, n) / log_b (B, m): log marginals (each sums to 1 over real tokens; padding ignored);
    masks True on real tokens. bound: an upper bound on |sim|/ε over all entries, when the caller
    knows one (TokenFlow: the largest token norms' product / ε); where it shows every entry safely
    within the dtype's range, the per-problem range statistics are skipped (the kernel is the same
    as they would give). Runs without autograd.
    """
    with torch.no_grad():
        return _solve(sim, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance, bound)


def _kernel(sim: Tensor, epsilon: float, bound: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """(K rows-major, K columns-major, risky (B,) bool). K = exp(S/ε), shifted by the problem's
    largest entry only where exp would overflow or underflow (the shift is absorbed by u, so it
    changes nothing but range; deciding per problem keeps each problem's kernel independent of its
    batch). A problem whose entries span more than `_SCALING_RANGE` of the dtype's exponent range
    is risky: the log domain solves it."""
    base = sim.transpose(1, 2) if columns_major(sim) else sim.contiguous()
    scaled = base if epsilon == 1.0 else base / epsilon
    span = _SCALING_RANGE * -math.log(torch.finfo(sim.dtype).tiny)
    log_max, log_tiny = math.log(torch.finfo(sim.dtype).max), math.log(torch.finfo(sim.dtype).tiny)
    if bound is not None and bound <= min(span / 2, 0.9 * log_max, -0.9 * log_tiny):
        # Every entry within ±span/2: no problem is risky and none needs a shift.
        risky = torch.zeros(len(sim), dtype=torch.bool, device=sim.device)
        kernel = scaled.exp()
    else:
        high, low = scaled.amax((1, 2)), scaled.amin((1, 2))
        risky = (high - low) > span
        out_of_range = (high > 0.9 * log_max) | (low < 0.9 * log_tiny)
        shift = torch.where(out_of_range, high, torch.zeros_like(high))
        kernel = (scaled - shift[:, None, None]).exp_() if bool((shift != 0).any()) else scaled.exp()
    other = kernel.transpose(1, 2).contiguous()
    return (other, kernel, risky) if base is not sim else (kernel, other, risky)


def _solve(sim, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance, bound) -> ConvergedScalings:
    batch = sim.shape[0]
    dtype, device = sim.dtype, sim.device
    zero = torch.zeros((), dtype=dtype, device=device)
    if batch:
        kernel_rows, kernel_cols, risky = _kernel(sim, epsilon, bound)
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
    # recorded) until three quarters of it have finished; then the rest is gathered, so later
    # sweeps read only their kernels (a gather copies kernels: worth it only for a small rest).
    work = torch.arange(batch, device=device)
    state = [kernel_rows, kernel_cols, a, b, pad_a, pad_b, mask_a, mask_b]
    if bool(risky.any()):
        work = work[~risky]
        state = [x[work] for x in state]
    k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w = state
    live = torch.ones(len(work), dtype=torch.bool, device=device)
    # Start from v_j = b_j / √(Kᵀa)_j (a function of the problem alone): on those tokens it saves
    # about one sweep against v = 1 (55 % instead of 4 % of pairs within 1e-3 after 3 sweeps, 92 %
    # instead of 53 % after 4; exponents 0.4–0.6 do about as well, √ is the cheapest).
    v = b_w / (vec_mat(a_w, k_rows).sqrt() + pad_b_w)
    kv = vec_mat(v, k_cols)
    u = torch.zeros_like(a_w)
    done = 0
    while len(work):
        # No check after the first sweep: virtually no pair meets a useful tolerance that early.
        if done >= min(2, iterations):
            err = _row_error(u * kv, a_w)
            bad = ~torch.isfinite(err)  # an underflowed sum makes the next scaling inf, then this NaN
            finished = live & (bad | (err <= tolerance) | (done >= iterations))
            if bool(finished.any()):
                index = work[finished]
                u_out[index], v_out[index], error[index] = u[finished], v[finished], err[finished]
                ran[index], broken[index] = done, bad[finished]
                live &= ~finished
            if done >= NEWTON_AFTER or not bool(live.any()):
                break
            if 4 * int(live.sum()) <= len(work):
                keep = live.nonzero().flatten()
                work, u, v, kv = work[keep], u[keep], v[keep], kv[keep]
                k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w = (
                    x[keep] for x in (k_rows, k_cols, a_w, b_w, pad_a_w, pad_b_w, mask_a_w, mask_b_w)
                )
                live = live[keep]
        u = a_w / (kv + pad_a_w)
        v = b_w / (vec_mat(u, k_rows) + pad_b_w)
        kv = vec_mat(v, k_cols)
        done += 1
    slow = live.nonzero().flatten() if len(work) else live
    if len(slow):
        index = work[slow]
        newton[index] = True
        results = _newton(k_rows[slow], k_cols[slow], a_w[slow], b_w[slow], mask_a_w[slow], mask_b_w[slow], v[slow],
                          kv[slow], done, iterations, tolerance)  # fmt: skip
        u_out[index], v_out[index], error[index], ran[index], broken[index] = results

    fallback = risky | broken
    if bool(fallback.any()):
        f = fallback.nonzero().flatten()
        redo = sinkhorn(-sim[f], log_a[f], log_b[f], mask_a[f], mask_b[f], epsilon, iterations,
                        tolerance=tolerance, domain="log")  # fmt: skip
        kernel_rows[f], kernel_cols[f] = redo.plan, redo.plan.transpose(1, 2)
        u_out[f], v_out[f] = mask_a[f].to(dtype), mask_b[f].to(dtype)
        error[f] = redo.plan.new_tensor(redo.marginal_error)
        ran[f] = redo.iterations
    worst = float(error.max()) if batch else 0.0
    return ConvergedScalings(
        kernel_rows=kernel_rows,
        kernel_cols=kernel_cols,
        u=u_out,
        v=v_out,
        newton=newton & ~fallback,
        fallback_mask=fallback,
        iterations=int(ran.max()) if batch else 0,
        marginal_error=worst,
        converged=tolerance > 0 and worst <= tolerance,
    )


def _newton(kernel, kernel_t, a, b, mask_a, mask_b, v, kv, done, iterations, tolerance):
    """Newton steps on the semi-dual for the gathered slow problems (module docstring, step 2).

    Returns (u, v, error, iterations run, broken) per problem. The steps run in float64 (the set
    is small) and stop a little below the tolerance there, so the plan rounded back to the working
    precision still meets it; the error returned is that plan's. A finished problem is frozen (its
    results recorded, later steps no longer touch it) until half of the set has finished; then the
    rest is gathered. Each problem's steps depend on itself alone.
    """
    dtype, count = kernel.dtype, len(a)
    # Rounding u, v back moves the row sums by a few ulps of the working dtype: stop that far below.
    target = tolerance - min(64 * torch.finfo(dtype).eps, tolerance / 2) if dtype != torch.float64 else tolerance
    k_rows, k_cols, a64, b64, v, kv = (x.double() for x in (kernel, kernel_t, a, b, v, kv))
    pad_a, pad_b, real_b = (~mask_a).double(), (~mask_b).double(), mask_b.double()
    u_out, v_out = torch.zeros_like(a64), torch.zeros_like(b64)
    ran = torch.full((count,), done, dtype=torch.long, device=a.device)
    broken = torch.zeros(count, dtype=torch.bool, device=a.device)
    work = torch.arange(count, device=a.device)
    live = torch.ones(count, dtype=torch.bool, device=a.device)
    system = _NewtonSystem(k_rows, a64, b64, pad_a, pad_b, real_b)
    while True:
        if 2 * int(live.sum()) <= len(work):
            keep = live.nonzero().flatten()
            work, live, k_rows, k_cols, v, kv = (x[keep] for x in (work, live, k_rows, k_cols, v, kv))
            a64, b64, pad_a, pad_b, real_b = (x[keep] for x in (a64, b64, pad_a, pad_b, real_b))
            system = _NewtonSystem(k_rows, a64, b64, pad_a, pad_b, real_b)
        grad, direction = system.direction(v, kv)
        slope = (grad * direction).sum(1)
        # Armijo backtracking per problem; frozen problems count as accepted. The gain of a step is
        # Φ(v·exp(step)) − Φ(v), written as a difference so Φ's large values cancel exactly.
        rows_before = kv + pad_a
        step_len = torch.ones(len(work), dtype=torch.float64, device=a.device)
        accepted = ~live
        v_new, kv_new = v, kv
        for _ in range(_HALVINGS):
            step = direction * step_len[:, None]
            v_try = v * step.exp()
            kv_try = vec_mat(v_try, k_cols)
            gain = (b64 * step).sum(1) - (a64 * torch.log((kv_try + pad_a) / rows_before)).sum(1)
            ok = (gain >= _ARMIJO * step_len * slope) & ~accepted  # a NaN gain is never accepted
            v_new = torch.where(ok[:, None], v_try, v_new)
            kv_new = torch.where(ok[:, None], kv_try, kv_new)
            accepted |= ok
            if bool(accepted.all()):
                break
            step_len = torch.where(accepted, step_len, step_len / 2)
        # A problem without an accepted step keeps v: the sweep below is then a plain one.
        u = a64 / (kv_new + pad_a)
        v = b64 / (vec_mat(u, k_rows) + pad_b)
        kv = vec_mat(v, k_cols)
        done += 1
        err = _row_error(u * kv, a64)
        bad = ~torch.isfinite(err)
        finished = live & (bad | (err <= target) | (done >= iterations))
        if bool(finished.any()):
            index = work[finished]
            u_out[index], v_out[index] = u[finished], v[finished]
            ran[index], broken[index] = done, bad[finished]
            live &= ~finished
            if not bool(live.any()):
                break
    u_out, v_out = u_out.to(dtype), v_out.to(dtype)
    error = _row_error(u_out * vec_mat(v_out, kernel_t), a)  # the returned plan's own error
    return u_out, v_out, error, ran, broken | ~torch.isfinite(error)


class _NewtonSystem:
    """The Newton system of a set of problems, all float64: the kernel, the marginals a, b (0 on
    padding), 1 on padded rows / columns (added to divisors, so padding's scalings are exactly 0),
    and the rank-one term that fixes the potentials' shift (see `direction`)."""

    def __init__(self, kernel: Tensor, a: Tensor, b: Tensor, pad_a: Tensor, pad_b: Tensor, real_b: Tensor):
        self.kernel, self.a, self.b, self.pad_a, self.pad_b = kernel, a, b, pad_a, pad_b
        self.shift_term = real_b[:, :, None] * real_b[:, None, :] / real_b.sum(1).clamp_min(1.0).square()[:, None, None]

    def direction(self, v: Tensor, kv: Tensor) -> tuple[Tensor, Tensor]:
        """(gradient b − c, Newton direction d) for log v, each (w, m) in float64: J d = b − c with
        J = diag(c) − Pᵀ diag(1/a) P the negated Hessian of the semi-dual at the plan P whose rows
        are exact for v (c its column sums). J is singular along 1 on the real columns (the
        potentials' shift) and b − c is orthogonal to it, so J + 1 1ᵀ/m² (on the scale of J's
        diagonal, c ~ 1/m) gives the same direction. A failed solve gives d = 0; no entry of d
        exceeds `_MAX_STEP` (the whole step is scaled down)."""
        u = self.a / (kv + self.pad_a)
        plan = self.kernel * u[:, :, None] * v[:, None, :]
        cols = plan.sum(1)
        # rows of P are exactly a: Pᵀ diag(1/a) P (padded rows are 0 in P; their divisor is 1)
        system = torch.baddbmm(
            self.shift_term, plan.transpose(1, 2), plan / (self.a + self.pad_a)[:, :, None], alpha=-1
        )
        system.diagonal(dim1=1, dim2=2).add_((cols + self.pad_b) * (1.0 + _RIDGE))
        grad = self.b - cols
        # J is symmetric positive definite: Cholesky (half LU's cost on these small systems); LU
        # for a system that rounding made indefinite.
        factor, info = torch.linalg.cholesky_ex(system)
        direction = torch.cholesky_solve(grad[:, :, None], factor)[:, :, 0]
        failed = info != 0
        if bool(failed.any()):
            direction[failed] = torch.linalg.solve_ex(system[failed], grad[failed])[0]
        direction.nan_to_num_(0.0, 0.0, 0.0)
        direction *= _MAX_STEP / direction.abs().amax(1, keepdim=True).clamp_min(_MAX_STEP)
        return grad, direction

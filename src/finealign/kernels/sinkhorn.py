"""Batched, log-domain Sinkhorn for entropic optimal transport between masked token sets.

Solves, for each of B independent problems,

    min_P  <P, C> + ε Σ P (log P − 1)   s.t.  P 1 = a  (rows),  Pᵀ 1 = b  (columns),

with the scaled potentials u = f/ε, v = g/ε kept in log space, so that small ε (1e-3 and
below) neither underflows the Gibbs kernel exp(−C/ε) nor overflows the scalings:

    u ← log a − logsumexp_j(−C_ij/ε + v_j)
    v ← log b − logsumexp_i(−C_ij/ε + u_i)
    P = exp(−C/ε + u ⊕ v)

Padding: a padded row or column has log-mass −inf; its kernel entries are −inf, so its plan
entries are exactly 0. Its potential is pinned to 0 (finite) so that no −inf − (−inf) = NaN ever
appears, and the log-sum-exp of an all-padding slice is taken over zeros instead of −inf (its
value is then discarded), which keeps the backward pass free of NaN too.

`log_a=None` drops the row constraint (semi-relaxed / one-sided OT): the exact solution is then
one column normalisation, P_{:,j} = b_j · softmax_i(−C_ij/ε), with no iterations at all.

Convergence. After each iteration the column sums equal b exactly; the row sums approach a. The
marginal error of a problem is Σ_i |(P 1)_i − a_i| (L1 over real rows; 0 for one-sided OT), and
`tolerance` > 0 stops the iterations as soon as every problem of the batch is within it, so
`iterations` becomes a cap. `sinkhorn()` returns the plan with the iterations run and the error
reached, so a caller can record whether the plan is optimal transport or a truncated solver.

Two domains give the same iterates:
* "log": the log-sum-exps above, over every kernel entry, every iteration.
* "scaling": the Gibbs kernel K = exp(−C/ε) is formed once; each half-iteration is a batched
  matrix–vector product, u ← a / (K v), v ← b / (Kᵀ u) (log u, log v equal the log domain's
  potentials). When a scaling leaves [1e-30, 1e30] the block absorbs the scalings into log
  potentials (K ← exp(−C/ε + f ⊕ g), u = v = 1). A problem whose sums still underflow (ε small
  against the cost spread) is flagged and solved again in the log domain, so results never
  depend on the domain beyond rounding.

The iterations are plain tensor ops, so autograd differentiates the unrolled solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from finealign.checks import check_choice, check_number, check_positive_int
from finealign.errors import ConfigError, ShapeError

DOMAINS = ("log", "scaling")
#: scalings outside [1/BOUND, BOUND] are absorbed into the log potentials (scaling domain)
_ABSORB_BOUND = 1e30
#: the scaling domain takes problems whose kernel spans at most this fraction of the dtype's
#: exponent range (exp(−spread/ε) ≥ tiny^0.6: fp32 ε ≥ spread/52, fp64 ε ≥ spread/425)
_SCALING_RANGE = 0.6


@dataclass(frozen=True)
class SinkhornResult:
    """A batch of transport plans and how far the solver got.

    plan: (B, n, m). iterations: iterations run (≤ the cap). marginal_error: the largest
    Σ_i |(P 1)_i − a_i| of the batch (0 for one-sided OT). converged: marginal_error ≤ tolerance
    (always True without a tolerance: nothing was asked). fallback: problems redone in the log
    domain after the scaling domain underflowed.
    """

    plan: Tensor
    iterations: int
    marginal_error: float
    converged: bool
    fallback: int = 0


def masked_logsumexp(x: Tensor, valid: Tensor, dim: int) -> Tensor:
    """logsumexp of `x` over `dim`, counting only `valid` entries.

    A slice with no valid entry returns logsumexp(0, …, 0) (a finite placeholder) rather than
    −inf, because the gradient of logsumexp over all −inf is NaN; callers mask that slice out.
    """
    has_any = valid.any(dim, keepdim=True)
    x = x.masked_fill(~valid, float("-inf"))
    x = torch.where(has_any, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return torch.logsumexp(x, dim)


def shift_to_zero_min(cost: Tensor, valid: Tensor, dim: int) -> Tensor:
    """`cost` minus its smallest valid entry along `dim`, so that minimum is exactly 0.

    The transport plan does not change (the potentials absorb a per-row or per-column constant),
    but exp(−C/ε) no longer rounds at small ε: in fp32, −C/ε ≈ −1e6 carries an absolute error
    of ~0.06, which the potentials would cancel only to that accuracy. Shifting before dividing
    keeps the dominant entries exact. The shift is detached since the plan does not depend on it.
    """
    with torch.no_grad():
        low = cost.masked_fill(~valid, torch.finfo(cost.dtype).max).amin(dim, keepdim=True)
        low = torch.where(valid.any(dim, keepdim=True), low, torch.zeros((), dtype=cost.dtype, device=cost.device))
    return cost - low


def log_sinkhorn(
    cost: Tensor,
    log_a: Tensor | None,
    log_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    epsilon: float,
    iterations: int,
) -> Tensor:
    """The plan of `sinkhorn` in the log domain with exactly `iterations` iterations."""
    return sinkhorn(cost, log_a, log_b, mask_a, mask_b, epsilon, iterations).plan


def sinkhorn(
    cost: Tensor,
    log_a: Tensor | None,
    log_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    epsilon: float,
    iterations: int,
    *,
    tolerance: float = 0.0,
    domain: str = "log",
) -> SinkhornResult:
    """Entropic transport plans for a batch of problems.

    cost:   (B, n, m) transport cost between row token i and column token j.
    log_a:  (B, n) log row marginals (each row of exp(log_a) sums to 1 over real rows), or None
            to leave the rows unconstrained (one-sided OT, see the module docstring).
    log_b:  (B, m) log column marginals.
    mask_a: (B, n) bool, True on real rows;  mask_b: (B, m) bool, True on real columns.
    iterations: the most iterations to run; tolerance > 0 stops earlier once every problem's
            row-marginal L1 error is ≤ tolerance (0: run all of them).
    domain: "log" or "scaling" (same iterates; see the module docstring).
    Values of log_a / log_b at padded positions are ignored.
    Returns the plan P (B, n, m) — exactly 0 on every padded row/column; the column sums equal b
    exactly and the row sums approach a — with the iterations run and the error reached.
    """
    _check_problem(cost, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance, domain)
    zero = torch.zeros((), dtype=cost.dtype, device=cost.device)
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    # Rows are shifted for the two-sided problem (the iterates stay exactly those of the unshifted
    # cost, only u moves by the shift), columns for the one-sided one (its closed form normalises columns).
    cost = shift_to_zero_min(cost, valid, dim=2 if log_a is not None else 1)
    log_kernel = (-cost / epsilon).masked_fill(~valid, float("-inf"))
    log_b = torch.where(mask_b, log_b, zero)
    if log_a is None:
        # One-sided OT: a single column normalisation is already the exact optimum.
        v = torch.where(mask_b, log_b - masked_logsumexp(log_kernel, valid, dim=1), zero)
        return SinkhornResult(torch.exp(log_kernel + v[:, None, :]), 1, 0.0, True)
    log_a = torch.where(mask_a, log_a, zero)
    if domain == "log":
        return _log_iterations(log_kernel, log_a, log_b, mask_a, mask_b, valid, iterations, tolerance)
    # A problem whose kernel spans more than the dtype's exponent range (ε small against its cost
    # spread) would underflow in the scaling domain: it is solved in the log domain from the start,
    # so no inf/NaN ever enters the graph that autograd differentiates.
    with torch.no_grad():
        spread = cost.masked_fill(~valid, 0).amax(dim=(1, 2)) / epsilon
        risky = spread > _SCALING_RANGE * -math.log(torch.finfo(cost.dtype).tiny)
    if not bool(risky.any()):
        return _scaling_iterations(log_kernel, log_a, log_b, mask_a, mask_b, valid, iterations, tolerance)
    safe, redo = (~risky).nonzero().flatten(), risky.nonzero().flatten()
    problems = (log_kernel, log_a, log_b, mask_a, mask_b, valid)
    plan = log_kernel.new_zeros(log_kernel.shape)
    parts = []
    for rows, solve in ((safe, _scaling_iterations), (redo, _log_iterations)):
        if len(rows):
            kernel, a, b, ma, mb, ok = (x[rows] for x in problems)
            parts.append(solve(kernel, a, b, ma, mb, ok, iterations, tolerance))
            plan = plan.index_put((rows,), parts[-1].plan)
    worst = max(p.marginal_error for p in parts)
    return SinkhornResult(
        plan,
        max(p.iterations for p in parts),
        worst,
        tolerance > 0 and worst <= tolerance,
        sum(p.fallback for p in parts) + len(redo),
    )


def _check_problem(cost, log_a, log_b, mask_a, mask_b, epsilon, iterations, tolerance, domain) -> None:
    if cost.dim() != 3:
        raise ShapeError(f"cost must be (B, n, m), got shape {tuple(cost.shape)}")
    batch, n, m = cost.shape
    if mask_a.shape != (batch, n) or mask_b.shape != (batch, m):
        raise ShapeError(
            f"masks must be (B, n)={(batch, n)} and (B, m)={(batch, m)}, "
            f"got {tuple(mask_a.shape)} and {tuple(mask_b.shape)}"
        )
    if log_b.shape != (batch, m) or (log_a is not None and log_a.shape != (batch, n)):
        raise ShapeError(
            f"log marginals must be (B, n)={(batch, n)} and (B, m)={(batch, m)}, got "
            f"{None if log_a is None else tuple(log_a.shape)} and {tuple(log_b.shape)}"
        )
    if not epsilon > 0:
        raise ConfigError(f"epsilon must be > 0, got {epsilon!r}")
    check_positive_int("iterations", iterations)
    check_number("tolerance", tolerance, low=0)
    check_choice("domain", domain, DOMAINS)


def _row_error(row_sums: Tensor, log_a: Tensor, mask_a: Tensor) -> Tensor:
    """(B,) Σ_i |row_sum_i − a_i| over real rows."""
    gap = (row_sums - log_a.exp()).abs()
    return torch.where(mask_a, gap, torch.zeros((), dtype=gap.dtype, device=gap.device)).sum(1)


def _log_iterations(log_kernel, log_a, log_b, mask_a, mask_b, valid, iterations, tolerance) -> SinkhornResult:
    """Log-domain iterations. Each problem stops on its own once within `tolerance` (its
    potentials freeze), so a problem's plan never depends on the others in its batch."""
    zero = torch.zeros((), dtype=log_kernel.dtype, device=log_kernel.device)
    batch, n, m = log_kernel.shape
    u = torch.zeros(batch, n, dtype=log_kernel.dtype, device=log_kernel.device)
    v = torch.zeros(batch, m, dtype=log_kernel.dtype, device=log_kernel.device)
    active = torch.ones(batch, 1, dtype=torch.bool, device=log_kernel.device)
    done = 0
    error = torch.full((batch,), math.inf, dtype=log_kernel.dtype, device=log_kernel.device)
    while True:
        # The row log-sum-exp of the current plan: the next u-update needs it anyway, and
        # exp(u + it) is the current plan's row sums, so checking convergence is almost free.
        row_lse = masked_logsumexp(log_kernel + v[:, None, :], valid, dim=2)
        if done:
            with torch.no_grad():
                error = _row_error((u + row_lse).exp(), log_a, mask_a)
                active = active & (error > tolerance)[:, None]
            if done == iterations or not bool(active.any()):
                break
        u = torch.where(mask_a & active, log_a - row_lse, u)
        v_new = log_b - masked_logsumexp(log_kernel + u[:, :, None], valid, dim=1)
        v = torch.where(mask_b & active, v_new, torch.where(mask_b, v, zero))
        done += 1
    plan = torch.exp(log_kernel + u[:, :, None] + v[:, None, :])
    worst = float(error.max()) if batch else 0.0
    return SinkhornResult(plan, done, worst, tolerance > 0 and worst <= tolerance)


def _scaling_iterations(log_kernel, log_a, log_b, mask_a, mask_b, valid, iterations, tolerance) -> SinkhornResult:
    """The scaling-domain iterations (module docstring).

    Each problem stops on its own once within `tolerance`; finished problems leave the working set
    at once (the remaining ones are re-gathered), so the cost follows each problem's own iteration
    count, not the slowest one's. Problems that underflow are redone in the log domain.
    """
    batch = log_kernel.shape[0]
    zero = torch.zeros((), dtype=log_kernel.dtype, device=log_kernel.device)
    a_all, b_all = torch.where(mask_a, log_a.exp(), zero), torch.where(mask_b, log_b.exp(), zero)
    # Final potentials of every problem, in log form: f + log u, g + log v.
    f_out, g_out = torch.zeros_like(log_a), torch.zeros_like(log_b)
    error = torch.zeros(batch, dtype=log_kernel.dtype, device=log_kernel.device)
    bad = torch.zeros(batch, dtype=torch.bool, device=log_kernel.device)
    work = torch.arange(batch, device=log_kernel.device)
    tiny = torch.finfo(log_kernel.dtype).tiny

    def log_scaling(x: Tensor, mask: Tensor) -> Tensor:
        """log of a scaling on real entries, 0 on padding (where the scaling is 0)."""
        return torch.where(mask, x.clamp_min(tiny).log(), zero)

    def kernel_around(f: Tensor, g: Tensor) -> Tensor:
        """The working set's Gibbs kernel with log potentials f, g absorbed (0 on padding)."""
        return (log_kernel[work] + f[:, :, None] + g[:, None, :]).exp()

    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    kernel, ma, mb, a, b, la = kernel_around(f, g), mask_a, mask_b, a_all, b_all, log_a
    u, v = ma.to(a.dtype), mb.to(b.dtype)
    done = 0
    while True:
        kv = (kernel * v[:, None, :]).sum(-1)  # (w, n): K v as a multiply-sum (3x a batched matvec on CPU)
        if done:
            with torch.no_grad():
                broken = ((kv <= 0) & ma).any(1) | ~torch.isfinite(kv).all(1)
                err = _row_error(u * kv, la, ma).masked_fill(broken, 0)
                stop = broken | (err <= tolerance) | (done == iterations)
            if bool(stop.any()):
                # Retire finished problems: write their potentials (and error) out.
                fin = stop.nonzero().flatten()
                f_out = f_out.index_put((work[fin],), f[fin] + log_scaling(u[fin], ma[fin]))
                g_out = g_out.index_put((work[fin],), g[fin] + log_scaling(v[fin], mb[fin]))
                error[work[fin]] = err[fin].detach()
                bad[work[fin]] = broken[fin]
                keep = (~stop).nonzero().flatten()
                if not len(keep):
                    break
                f, g, u, v, kv = f[keep], g[keep], u[keep], v[keep], kv[keep]
                work = work[keep]
                kernel, ma, mb, a, b, la = kernel[keep], ma[keep], mb[keep], a[keep], b[keep], la[keep]
        # Denominators that underflowed are replaced by 1 (that problem is flagged and redone in
        # the log domain), so no inf enters the graph.
        u = torch.where(ma, a / torch.where(ma & (kv > 0), kv, 1.0), zero)
        ktu = (kernel * u[:, :, None]).sum(1)  # (w, m): Kᵀ u
        v = torch.where(mb, b / torch.where(mb & (ktu > 0), ktu, 1.0), zero)
        done += 1
        with torch.no_grad():
            real = torch.cat([u[ma], v[mb]])
            absorb = bool(((real > _ABSORB_BOUND) | (real < 1 / _ABSORB_BOUND)).any())
        if absorb:
            # Move the scalings into the log potentials and rebuild the kernel around them.
            f, g = f + log_scaling(u, ma), g + log_scaling(v, mb)
            kernel = kernel_around(f, g)
            u, v = ma.to(a.dtype), mb.to(b.dtype)
    plan = (log_kernel + f_out[:, :, None] + g_out[:, None, :]).exp()
    fallback = int(bad.sum())
    if fallback:
        redo = bad.nonzero().flatten()
        fixed = _log_iterations(
            log_kernel[redo], log_a[redo], log_b[redo], mask_a[redo], mask_b[redo], valid[redo], iterations, tolerance
        )
        plan = plan.index_put((redo,), fixed.plan)
        error[redo] = fixed.plan.new_tensor(fixed.marginal_error)
    worst = float(error.max()) if batch else 0.0
    return SinkhornResult(plan, done, worst, tolerance > 0 and worst <= tolerance, fallback)

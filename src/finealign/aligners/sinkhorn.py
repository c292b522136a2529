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

The iterations are plain tensor ops, so autograd differentiates the unrolled solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.errors import ConfigError, ShapeError


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
    """Entropic transport plans for a batch of problems.

    cost:   (B, n, m) transport cost between row token i and column token j.
    log_a:  (B, n) log row marginals (each row of exp(log_a) sums to 1 over real rows), or None
            to leave the rows unconstrained (one-sided OT, see the module docstring).
    log_b:  (B, m) log column marginals.
    mask_a: (B, n) bool, True on real rows;  mask_b: (B, m) bool, True on real columns.
    Values of log_a / log_b at padded positions are ignored.
    Returns the plan P (B, n, m): exactly 0 on every padded row/column; after the last
    iteration the column sums equal b exactly and the row sums approach a.
    """
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
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations must be a positive int, got {iterations!r}")

    zero = torch.zeros((), dtype=cost.dtype, device=cost.device)
    valid = mask_a[:, :, None] & mask_b[:, None, :]
    # Rows are shifted for the two-sided problem (the iterates stay exactly those of the unshifted
    # cost, only u moves by the shift), columns for the one-sided one (its closed form normalises columns).
    cost = shift_to_zero_min(cost, valid, dim=2 if log_a is not None else 1)
    log_kernel = (-cost / epsilon).masked_fill(~valid, float("-inf"))
    log_b = torch.where(mask_b, log_b, zero)
    u = torch.zeros(batch, n, dtype=cost.dtype, device=cost.device)
    v = torch.zeros(batch, m, dtype=cost.dtype, device=cost.device)
    if log_a is None:
        # One-sided OT: a single column normalisation is already the exact optimum.
        v = torch.where(mask_b, log_b - masked_logsumexp(log_kernel, valid, dim=1), zero)
    else:
        log_a = torch.where(mask_a, log_a, zero)
        for _ in range(iterations):
            u = torch.where(mask_a, log_a - masked_logsumexp(log_kernel + v[:, None, :], valid, dim=2), zero)
            v = torch.where(mask_b, log_b - masked_logsumexp(log_kernel + u[:, :, None], valid, dim=1), zero)
    return torch.exp(log_kernel + u[:, :, None] + v[:, None, :])

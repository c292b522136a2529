"""Fused log-domain Sinkhorn (TokenFlow) on the GPU: one program takes one image and a few
captions, computes their token similarities once, keeps every (Lv × Lt) problem in registers for
all iterations, and writes Σ flow·sim per pair. Forward only (scoring); training goes through the
differentiable torch solver.

Semantics follow finealign.aligners.sinkhorn.log_sinkhorn with cost = 1 − sim and ε: scaled
potentials start at 0; each iteration updates the row side then the column side; padded tokens
have potential 0 and plan 0; a one-sided problem is one column normalisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from finealign.kernels.maxsim_triton import _precision, _sim_tile
from finealign.kernels.tiles import next_pow2


@triton.jit
def _lse(x, axis: tl.constexpr):
    """Masked log2-sum-exp2 (masked entries hold -inf); -inf for a slice with nothing real.
    The kernel works in base-2 logs throughout: exp2/log2 are the hardware's native functions."""
    mx = tl.max(x, axis=axis)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    return tl.log2(tl.sum(tl.exp2(x - tl.expand_dims(safe, axis)), axis=axis)) + safe


@triton.jit
def _update_visual(logk, w, la2, vm2):
    """u_r = log a_r − LSE_w(logk + w) over each caption's words: (LVP, BT)."""
    lse = _lse(logk + w[None, :, :], 2)
    return tl.where(vm2 & (lse > float("-inf")), la2 - lse, 0.0)


@triton.jit
def _update_text(logk, u, lb3, tm3):
    """w_w = log b_w − LSE_r(logk + u) over the image's regions: (BT, LTP)."""
    lse = _lse(logk + u[:, :, None], 0)
    return tl.where(tm3 & (lse > float("-inf")), lb3 - lse, 0.0)


@triton.jit
def _scale_visual(kt, W, A, vm2, TINY: tl.constexpr):
    """Scaling-domain row update U_r = a_r / Σ_w K̃_rw W_w: (LVP, BT), and where it lost precision."""
    x = tl.sum(kt * W[None, :, :], axis=2)
    return tl.where(vm2, A / x, 1.0), vm2 & (x < TINY)


@triton.jit
def _scale_text(kt, U, B, tm3, TINY: tl.constexpr):
    """Scaling-domain column update W_w = b_w / Σ_r K̃_rw U_r: (BT, LTP), and where it lost precision."""
    x = tl.sum(kt * U[:, :, None], axis=0)
    return tl.where(tm3, B / x, 1.0), tm3 & (x < TINY)


@triton.jit
def _scaling_sinkhorn(logk, la2, lb3, vm2, tm3, iterations, TEXT_FIRST: tl.constexpr, ABSORB: tl.constexpr):
    """The log-domain iterations, done as multiply-adds on K̃ = 2^(logk + u + w) with the scalings
    U, W absorbed into the log potentials u, w every ABSORB iterations (one exp2 per entry per
    block instead of one per entry per half-iteration). The same iterates as the log domain:
    the first update of one side ignores that side's start, so it starts at minus its maxima
    (each row, or column, of K̃ then peaks at exactly 1). Returns u, w and a per-caption flag (BT,)
    raised where a sum fell below TINY (too small an ε for the spread of the similarities):
    the caller then recomputes those pairs in the log domain."""
    TINY: tl.constexpr = 1e-30
    if TEXT_FIRST:
        w = tl.max(logk, axis=0)
        w = tl.where(tm3 & (w > float("-inf")), -w, 0.0)
        u = tl.zeros(la2.shape, dtype=tl.float32)
    else:
        u = tl.max(logk, axis=2)
        u = tl.where(vm2 & (u > float("-inf")), -u, 0.0)
        w = tl.zeros(lb3.shape, dtype=tl.float32)
    A = tl.where(vm2, tl.exp2(la2), 0.0)
    B = tl.where(tm3, tl.exp2(lb3), 0.0)
    bad_v = tl.zeros(u.shape, dtype=tl.int1)
    bad_t = tl.zeros(w.shape, dtype=tl.int1)
    for start in range(0, iterations, ABSORB):
        kt = tl.exp2(logk + u[:, :, None] + w[None, :, :])  # 0 where logk is -inf
        U = tl.full(u.shape, 1.0, tl.float32)
        W = tl.full(w.shape, 1.0, tl.float32)
        for _ in range(0, tl.minimum(ABSORB, iterations - start)):
            if TEXT_FIRST:
                W, low = _scale_text(kt, U, B, tm3, TINY)
                bad_t = bad_t | low
                U, low = _scale_visual(kt, W, A, vm2, TINY)
                bad_v = bad_v | low
            else:
                U, low = _scale_visual(kt, W, A, vm2, TINY)
                bad_v = bad_v | low
                W, low = _scale_text(kt, U, B, tm3, TINY)
                bad_t = bad_t | low
        u = tl.where(vm2, u + tl.log2(U), 0.0)
        w = tl.where(tm3, w + tl.log2(W), 0.0)
    bad = (tl.max(bad_v.to(tl.int32), axis=0) + tl.max(bad_t.to(tl.int32), axis=1)) > 0
    return u, w, bad


@triton.jit
def _log_softmax(x, mask, axis: tl.constexpr):
    """Log-softmax over the real entries of `axis` (−inf on padding; 0 where a slice is all padding)."""
    x = tl.where(mask, x, float("-inf"))
    return tl.where(mask, x - tl.expand_dims(_lse(x, axis), axis), float("-inf"))


@triton.jit
def _importance(
    v_ptr, t_ptr, vp_ptr, tp_ptr, iv0, it0, Nt, Lv, Lt, D,
    s_vn, s_vl, s_vd, s_tn, s_tl, s_td, s_vpn, s_vpd, s_tpn, s_tpd,
    LVP: tl.constexpr, BT: tl.constexpr, LTP: tl.constexpr, BK: tl.constexpr,
):
    """Raw importance logits: region·caption-global (LVP, BT) and word·image-global (BT·LTP,)."""
    rows = tl.arange(0, LVP)
    cols = tl.arange(0, BT * LTP)
    caps = it0 + tl.arange(0, BT)
    cap = it0 + cols // LTP
    ctok = cols % LTP
    row_in = rows < Lv
    col_in = (cap < Nt) & (ctok < Lt)
    region = tl.zeros((LVP, BT), dtype=tl.float32)
    word = tl.zeros((BT * LTP,), dtype=tl.float32)
    for k in range(0, D, BK):
        kk = k + tl.arange(0, BK)
        kin = kk < D
        a = tl.load(v_ptr + iv0.to(tl.int64) * s_vn + rows[:, None] * s_vl + kk[None, :] * s_vd,
                    mask=row_in[:, None] & kin[None, :], other=0.0).to(tl.float32)
        tg = tl.load(tp_ptr + caps[:, None].to(tl.int64) * s_tpn + kk[None, :] * s_tpd,
                     mask=(caps[:, None] < Nt) & kin[None, :], other=0.0).to(tl.float32)
        region += tl.sum(a[:, None, :] * tg[None, :, :], axis=2)
        b = tl.load(t_ptr + cap[:, None].to(tl.int64) * s_tn + ctok[:, None] * s_tl + kk[None, :] * s_td,
                    mask=col_in[:, None] & kin[None, :], other=0.0).to(tl.float32)
        vg = tl.load(vp_ptr + iv0.to(tl.int64) * s_vpn + kk * s_vpd, mask=kin, other=0.0).to(tl.float32)
        word += tl.sum(b * vg[None, :], axis=1)
    return region, word


@triton.jit
def _sinkhorn_fwd(
    v_ptr, t_ptr, vm_ptr, tm_ptr, la_ptr, lb_ptr, vp_ptr, tp_ptr, out_ptr, pairs_ptr,
    Nv, Nt, Lv, Lt, D, s_vn, s_vl, s_vd, s_tn, s_tl, s_td, s_vpn, s_vpd, s_tpn, s_tpd,
    inv_eps, inv_tau, iterations,
    LVP: tl.constexpr, BT: tl.constexpr, LTP: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    TEXT_FIRST: tl.constexpr, ONE_SIDED: tl.constexpr, IMPORTANCE: tl.constexpr,
    PAIRS: tl.constexpr, SCALING: tl.constexpr, ABSORB: tl.constexpr,
):
    pid = tl.program_id(0)
    if PAIRS:
        # One listed pair per program: its caption is the block's first (any others are extra
        # columns tl.dot needs, computed and dropped); the score goes to out[pid].
        iv0 = tl.load(pairs_ptr + 2 * pid)
        it0 = tl.load(pairs_ptr + 2 * pid + 1)
    else:
        nbt = tl.cdiv(Nt, BT)
        iv0 = pid // nbt
        it0 = (pid % nbt) * BT
    acc, vm, tm = _sim_tile(
        v_ptr, t_ptr, vm_ptr, tm_ptr, iv0, it0, Nv, Nt, Lv, Lt, D,
        s_vn, s_vl, s_vd, s_tn, s_tl, s_td, 1, LVP, BT, LTP, BK, PREC,
    )
    s3 = tl.reshape(acc, (LVP, BT, LTP))
    valid3 = tl.reshape(vm[:, None] & tm[None, :], (LVP, BT, LTP))
    # −cost/ε with cost = 1 − sim, in log2 units (as are all potentials and marginals below).
    logk = tl.where(valid3, (s3 - 1.0) * (inv_eps * 1.4426950408889634), float("-inf"))
    rows = tl.arange(0, LVP)
    vm2 = vm[:, None]
    tm3 = tl.reshape(tm, (BT, LTP))
    if IMPORTANCE:
        # TokenFlow's marginals: softmax over real regions of region·(caption global)/τ, and over
        # real words of word·(image global)/τ — different for every pair, so made here.
        region, word = _importance(
            v_ptr, t_ptr, vp_ptr, tp_ptr, iv0, it0, Nt, Lv, Lt, D,
            s_vn, s_vl, s_vd, s_tn, s_tl, s_td, s_vpn, s_vpd, s_tpn, s_tpd, LVP, BT, LTP, BK,
        )
        scale = inv_tau * 1.4426950408889634
        la2 = tl.where(vm2, _log_softmax(region * scale, vm2, 0), 0.0)  # (LVP, BT)
        lb3 = tl.where(tm3, _log_softmax(tl.reshape(word, (BT, LTP)) * scale, tm3, 1), 0.0)
    else:
        la = tl.load(la_ptr + iv0 * Lv + rows, mask=rows < Lv, other=0.0) * 1.4426950408889634
        la2 = tl.where(vm, la, 0.0)[:, None]
        cols = tl.arange(0, BT * LTP)
        cap = it0 + cols // LTP
        ctok = cols % LTP
        lb = tl.load(lb_ptr + cap * Lt + ctok, mask=(cap < Nt) & (ctok < Lt), other=0.0) * 1.4426950408889634
        lb3 = tl.where(tm3, tl.reshape(lb, (BT, LTP)), 0.0)
    u = tl.zeros((LVP, BT), dtype=tl.float32)
    w = tl.zeros((BT, LTP), dtype=tl.float32)
    bad = tl.zeros((BT,), dtype=tl.int1)
    if SCALING and not ONE_SIDED:
        u, w, bad = _scaling_sinkhorn(logk, la2 + u, lb3, vm2, tm3, iterations, TEXT_FIRST, ABSORB)
    elif ONE_SIDED:
        # Only the column side is constrained: one normalisation is the exact optimum.
        if TEXT_FIRST:
            u = _update_visual(logk, w, la2, vm2)
        else:
            w = _update_text(logk, u, lb3, tm3)
    else:
        for _ in range(iterations):
            if TEXT_FIRST:
                w = _update_text(logk, u, lb3, tm3)
                u = _update_visual(logk, w, la2, vm2)
            else:
                u = _update_visual(logk, w, la2, vm2)
                w = _update_text(logk, u, lb3, tm3)
    flow = tl.exp2(logk + u[:, :, None] + w[None, :, :])  # 0 wherever logk is -inf
    score = tl.sum(tl.sum(tl.where(valid3, flow * s3, 0.0), axis=2), axis=0)  # (BT,)
    score = tl.where(bad, float("nan"), score)  # the host redoes these in the log domain
    it = it0 + tl.arange(0, BT)
    if PAIRS:
        tl.store(out_ptr + pid + tl.arange(0, BT) * 0, score, mask=tl.arange(0, BT) == 0)
    else:
        tl.store(out_ptr + iv0 * Nt + it, score, mask=it < Nt)


def sinkhorn_triton(
    v: Tensor, vmask: Tensor, t: Tensor, tmask: Tensor, log_visual: Tensor | None, log_text: Tensor | None,
    epsilon: float, iterations: int, rows: str, one_sided: bool, captions_per_program: int | None = None,
    visual_pooled: Tensor | None = None, text_pooled: Tensor | None = None, marginal_temperature: float = 0.1,
    num_warps: int | None = None, pairs: Tensor | None = None, domain: str = "log", absorb_every: int = 10,
) -> Tensor:
    """(Nv, Nt) fp32 Σ flow·sim, or (P,) for the listed `pairs`. Marginals: the given (N, L) log
    masses (padding ignored), or, with pooled vectors, TokenFlow's per-pair importance softmax
    (log_* are then ignored). domain="scaling" iterates on exp(−C/ε) with multiply-adds (see
    _scaling_sinkhorn); pairs it flags (sums below 1e-30, from ε small against the spread of the
    similarities) are recomputed here in the log domain, so both domains give the same numbers."""
    importance = visual_pooled is not None
    if not importance:
        visual_pooled, text_pooled = v.new_zeros(1, 1), t.new_zeros(1, 1)  # unused placeholders
    else:
        log_visual, log_text = vmask.new_zeros(1, dtype=torch.float32), tmask.new_zeros(1, dtype=torch.float32)
    out = torch.ops.finealign.sinkhorn_forward(
        v, t, vmask.to(torch.int8).contiguous(), tmask.to(torch.int8).contiguous(),
        log_visual.float().contiguous(), log_text.float().contiguous(), visual_pooled, text_pooled,
        None if pairs is None else pairs.to(torch.int32).contiguous(),
        float(epsilon), float(marginal_temperature), int(iterations), rows == "text", bool(one_sided), importance,
        domain == "scaling", int(absorb_every), int(captions_per_program or 0), int(num_warps or 0),
    )
    if domain == "scaling" and not one_sided:
        flagged = torch.isnan(out)  # one device sync: the price of the fallback
        if bool(flagged.any()):
            index = flagged.nonzero()
            redo = index if pairs is None else pairs[index[:, 0]]
            marginals = dict(visual_pooled=visual_pooled, text_pooled=text_pooled) if importance else {}
            out[flagged] = sinkhorn_triton(
                v, vmask, t, tmask, log_visual, log_text, epsilon, iterations, rows, one_sided,
                marginal_temperature=marginal_temperature, num_warps=num_warps, pairs=redo, domain="log", **marginals,
            )
    return out


def launch_sinkhorn(
    v, t, vmask8, tmask8, la, lb, vp, tp, pairs, epsilon, marginal_temperature, iterations, text_first, one_sided,
    importance, scaling, absorb_every, captions_per_program, num_warps,
) -> Tensor:
    """finealign::sinkhorn_forward: one launch of the fused kernel (0 = default for the last two)."""
    nv, lv, d = v.shape
    nt, lt, _ = t.shape
    # tl.dot needs at least 16 rows and columns per tile.
    lvp, ltp = max(16, next_pow2(lv)), next_pow2(lt)
    # One caption per program, and a single warp for a 64 × 32 problem: on an H200 that was the
    # fastest (benchmarks/gpu_notes.md): the per-iteration reductions then stay inside one warp.
    bt = 1 if pairs is not None else (captions_per_program or 1)
    bt = max(bt, -(-16 // ltp))  # tl.dot needs ≥ 16 columns
    warps = num_warps or min(8, next_pow2(max(1, lvp * bt * ltp // 2048)))
    if pairs is None:
        out = torch.empty(nv, nt, dtype=torch.float32, device=v.device)
        grid, pairs_arg = (nv * triton.cdiv(nt, bt),), out  # pairs_arg: an unused placeholder
    else:
        out = torch.empty(pairs.shape[0], dtype=torch.float32, device=v.device)
        grid, pairs_arg = (pairs.shape[0],), pairs
    if grid[0] == 0:
        return out
    _sinkhorn_fwd[grid](
        v, t, vmask8, tmask8, la, lb, vp, tp, out, pairs_arg,
        nv, nt, lv, lt, d, *v.stride(), *t.stride(), *vp.stride(), *tp.stride(),
        1.0 / epsilon, 1.0 / marginal_temperature, iterations,
        LVP=lvp, BT=bt, LTP=ltp, BK=32 if v.dtype == torch.float32 else 64, PREC=_precision(v.dtype),
        TEXT_FIRST=text_first, ONE_SIDED=one_sided, IMPORTANCE=importance,
        PAIRS=pairs is not None, SCALING=scaling, ABSORB=absorb_every,
        num_warps=warps, num_stages=2,
    )
    return out

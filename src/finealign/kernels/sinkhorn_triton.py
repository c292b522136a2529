"""Fused log-domain Sinkhorn (TokenFlow) on the GPU: one program takes one image and a few
captions, computes their token similarities once, keeps every (Lv × Lt) problem in registers for
all iterations, and writes Σ flow·sim per pair. For training, the forward also saves every
iteration's potentials and a backward kernel runs reverse mode through the unrolled iterations
(_sinkhorn_bwd), matching the torch solver's autograd gradients.

Semantics follow finealign.kernels.sinkhorn.log_sinkhorn with cost = 1 − sim and ε: scaled
potentials start at 0; each iteration updates the row side then the column side; padded tokens
have potential 0 and plan 0; a one-sided problem is one column normalisation.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch import Tensor

from finealign.kernels.sinkhorn_options import SinkhornLaunch, SinkhornOptions
from finealign.kernels.tiles import next_pow2
from finealign.kernels.triton_common import dot_precision, sim_tile


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
    v_ptr,
    t_ptr,
    vp_ptr,
    tp_ptr,
    iv0,
    it0,
    Nt,
    Lv,
    Lt,
    D,
    s_vn,
    s_vl,
    s_vd,
    s_tn,
    s_tl,
    s_td,
    s_vpn,
    s_vpd,
    s_tpn,
    s_tpd,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
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
        a = tl.load(
            v_ptr + iv0.to(tl.int64) * s_vn + rows[:, None] * s_vl + kk[None, :] * s_vd,
            mask=row_in[:, None] & kin[None, :],
            other=0.0,
        ).to(tl.float32)
        tg = tl.load(
            tp_ptr + caps[:, None].to(tl.int64) * s_tpn + kk[None, :] * s_tpd,
            mask=(caps[:, None] < Nt) & kin[None, :],
            other=0.0,
        ).to(tl.float32)
        region += tl.sum(a[:, None, :] * tg[None, :, :], axis=2)
        b = tl.load(
            t_ptr + cap[:, None].to(tl.int64) * s_tn + ctok[:, None] * s_tl + kk[None, :] * s_td,
            mask=col_in[:, None] & kin[None, :],
            other=0.0,
        ).to(tl.float32)
        vg = tl.load(vp_ptr + iv0.to(tl.int64) * s_vpn + kk * s_vpd, mask=kin, other=0.0).to(tl.float32)
        word += tl.sum(b * vg[None, :], axis=1)
    return region, word


@triton.jit
def _block_ids(pid, pairs_ptr, Nt, BT: tl.constexpr, PAIRS: tl.constexpr):
    """The image and first caption of program `pid`: one image × BT captions, or with PAIRS one
    listed pair (its caption is the block's first; any others are extra columns tl.dot needs,
    computed and dropped)."""
    if PAIRS:
        return tl.load(pairs_ptr + 2 * pid), tl.load(pairs_ptr + 2 * pid + 1)
    nbt = tl.cdiv(Nt, BT)
    return pid // nbt, (pid % nbt) * BT


@triton.jit
def _problem(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    la_ptr,
    lb_ptr,
    vp_ptr,
    tp_ptr,
    iv0,
    it0,
    Nv,
    Nt,
    Lv,
    Lt,
    D,
    s_vn,
    s_vl,
    s_vd,
    s_tn,
    s_tl,
    s_td,
    s_vpn,
    s_vpd,
    s_tpn,
    s_tpd,
    inv_eps,
    inv_tau,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    IMPORTANCE: tl.constexpr,
):
    """One image × BT captions: similarities s3 (LVP, BT, LTP), their validity, −cost/ε as logk,
    token masks, and the log2 marginals la2 (LVP, BT | 1) and lb3 (BT, LTP)."""
    acc, vm, tm = sim_tile(
        v_ptr,
        t_ptr,
        vm_ptr,
        tm_ptr,
        iv0,
        it0,
        Nv,
        Nt,
        Lv,
        Lt,
        D,
        s_vn,
        s_vl,
        s_vd,
        s_tn,
        s_tl,
        s_td,
        1,
        LVP,
        BT,
        LTP,
        BK,
        PREC,
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
            v_ptr,
            t_ptr,
            vp_ptr,
            tp_ptr,
            iv0,
            it0,
            Nt,
            Lv,
            Lt,
            D,
            s_vn,
            s_vl,
            s_vd,
            s_tn,
            s_tl,
            s_td,
            s_vpn,
            s_vpd,
            s_tpn,
            s_tpd,
            LVP,
            BT,
            LTP,
            BK,
        )
        scale = inv_tau * 1.4426950408889634
        la2 = tl.where(vm2, _log_softmax(region * scale, vm2, 0), 0.0)  # (LVP, BT)
        lb3 = tl.where(tm3, _log_softmax(tl.reshape(word, (BT, LTP)) * scale, tm3, 1), 0.0)
    else:
        la = tl.load(la_ptr + iv0 * Lv + rows, mask=rows < Lv, other=0.0) * 1.4426950408889634
        la2 = tl.where(vm, la, 0.0)[:, None] + tl.zeros((LVP, BT), dtype=tl.float32)
        cols = tl.arange(0, BT * LTP)
        cap = it0 + cols // LTP
        ctok = cols % LTP
        lb = tl.load(lb_ptr + cap * Lt + ctok, mask=(cap < Nt) & (ctok < Lt), other=0.0) * 1.4426950408889634
        lb3 = tl.where(tm3, tl.reshape(lb, (BT, LTP)), 0.0)
    return s3, valid3, logk, vm, tm, vm2, tm3, la2, lb3


@triton.jit
def _saved_offsets(pid, iterations, LVP: tl.constexpr, BT: tl.constexpr, LTP: tl.constexpr):
    """Where program `pid` keeps iteration 0's potentials u (LVP, BT) and w (BT, LTP) in the
    training scratch; iteration k's are k·(LVP·BT + BT·LTP) further."""
    base = pid.to(tl.int64) * iterations * (LVP * BT + BT * LTP)
    u_off = base + tl.reshape(tl.arange(0, LVP)[:, None] * BT + tl.arange(0, BT)[None, :], (LVP, BT))
    w_off = base + LVP * BT + tl.reshape(tl.arange(0, BT)[:, None] * LTP + tl.arange(0, LTP)[None, :], (BT, LTP))
    return u_off, w_off


@triton.jit
def _sinkhorn_fwd(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    la_ptr,
    lb_ptr,
    vp_ptr,
    tp_ptr,
    out_ptr,
    pairs_ptr,
    save_ptr,
    Nv,
    Nt,
    Lv,
    Lt,
    D,
    s_vn,
    s_vl,
    s_vd,
    s_tn,
    s_tl,
    s_td,
    s_vpn,
    s_vpd,
    s_tpn,
    s_tpd,
    inv_eps,
    inv_tau,
    iterations,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    TEXT_FIRST: tl.constexpr,
    ONE_SIDED: tl.constexpr,
    IMPORTANCE: tl.constexpr,
    PAIRS: tl.constexpr,
    SCALING: tl.constexpr,
    ABSORB: tl.constexpr,
    SAVE: tl.constexpr,
):
    pid = tl.program_id(0)
    iv0, it0 = _block_ids(pid, pairs_ptr, Nt, BT, PAIRS)
    s3, valid3, logk, vm, tm, vm2, tm3, la2, lb3 = _problem(
        v_ptr,
        t_ptr,
        vm_ptr,
        tm_ptr,
        la_ptr,
        lb_ptr,
        vp_ptr,
        tp_ptr,
        iv0,
        it0,
        Nv,
        Nt,
        Lv,
        Lt,
        D,
        s_vn,
        s_vl,
        s_vd,
        s_tn,
        s_tl,
        s_td,
        s_vpn,
        s_vpd,
        s_tpn,
        s_tpd,
        inv_eps,
        inv_tau,
        LVP,
        BT,
        LTP,
        BK,
        PREC,
        IMPORTANCE,
    )
    u = tl.zeros((LVP, BT), dtype=tl.float32)
    w = tl.zeros((BT, LTP), dtype=tl.float32)
    bad = tl.zeros((BT,), dtype=tl.int1)
    if SCALING and not ONE_SIDED:
        u, w, bad = _scaling_sinkhorn(logk, la2, lb3, vm2, tm3, iterations, TEXT_FIRST, ABSORB)
    elif ONE_SIDED:
        # Only the column side is constrained: one normalisation is the exact optimum.
        if TEXT_FIRST:
            u = _update_visual(logk, w, la2, vm2)
        else:
            w = _update_text(logk, u, lb3, tm3)
    else:
        # SAVE (training): keep every iteration's potentials, (u_k, w_k) per program, for backward.
        u_off, w_off = _saved_offsets(pid, iterations, LVP, BT, LTP)
        size = LVP * BT + BT * LTP
        for k in range(iterations):
            if TEXT_FIRST:
                w = _update_text(logk, u, lb3, tm3)
                u = _update_visual(logk, w, la2, vm2)
            else:
                u = _update_visual(logk, w, la2, vm2)
                w = _update_text(logk, u, lb3, tm3)
            if SAVE:
                tl.store(save_ptr + u_off + k * size, u)
                tl.store(save_ptr + w_off + k * size, w)
    flow = tl.exp2(logk + u[:, :, None] + w[None, :, :])  # 0 wherever logk is -inf
    score = tl.sum(tl.sum(tl.where(valid3, flow * s3, 0.0), axis=2), axis=0)  # (BT,)
    score = tl.where(bad, float("nan"), score)  # the host redoes these in the log domain
    it = it0 + tl.arange(0, BT)
    if PAIRS:
        tl.store(out_ptr + pid + tl.arange(0, BT) * 0, score, mask=tl.arange(0, BT) == 0)
    else:
        tl.store(out_ptr + iv0 * Nt + it, score, mask=it < Nt)


@triton.jit
def _sinkhorn_bwd(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    la_ptr,
    lb_ptr,
    vp_ptr,
    tp_ptr,
    g_ptr,
    save_ptr,
    dv_ptr,
    dt_ptr,
    dla_ptr,
    dlb_ptr,
    dvp_ptr,
    dtp_ptr,
    Nv,
    Nt,
    Lv,
    Lt,
    D,
    s_vn,
    s_vl,
    s_vd,
    s_tn,
    s_tl,
    s_td,
    s_vpn,
    s_vpd,
    s_tpn,
    s_tpd,
    inv_eps,
    inv_tau,
    iterations,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    TEXT_FIRST: tl.constexpr,
    ONE_SIDED: tl.constexpr,
    IMPORTANCE: tl.constexpr,
    NEED_DV: tl.constexpr,
    NEED_DT: tl.constexpr,
    NEED_DM: tl.constexpr,
):
    """Reverse mode through the unrolled iterations, from the potentials the forward saved.

    Each half-iteration x = m − LSE(logk + y) has Jacobian rows given by its softmax, which is
    the saved iterates' plan divided by the marginal: e.g. for w_k = lb − LSE_r(logk + u_k),
    softmax_r = 2^(logk + u_k + w_k − lb). So per half-iteration: dm += dx, dlogk −= soft·dx,
    dy −= Σ soft·dx. Then d sim = g·flow + dlogk/ε, and the two matmuls give the token gradients
    (plus, for importance marginals, the softmax backward to region/word logits and their dot
    products with the global vectors). Gradients leave through fp32 atomic adds.
    """
    pid = tl.program_id(0)
    iv0, it0 = _block_ids(pid, pid, Nt, BT, False)
    s3, valid3, logk, vm, tm, vm2, tm3, la2, lb3 = _problem(
        v_ptr,
        t_ptr,
        vm_ptr,
        tm_ptr,
        la_ptr,
        lb_ptr,
        vp_ptr,
        tp_ptr,
        iv0,
        it0,
        Nv,
        Nt,
        Lv,
        Lt,
        D,
        s_vn,
        s_vl,
        s_vd,
        s_tn,
        s_tl,
        s_td,
        s_vpn,
        s_vpd,
        s_tpn,
        s_tpd,
        inv_eps,
        inv_tau,
        LVP,
        BT,
        LTP,
        BK,
        PREC,
        IMPORTANCE,
    )
    caps = it0 + tl.arange(0, BT)
    g = tl.load(g_ptr + iv0 * Nt + caps, mask=caps < Nt, other=0.0)  # (BT,)
    u_off, w_off = _saved_offsets(pid, iterations, LVP, BT, LTP)
    size = LVP * BT + BT * LTP
    zero_u = tl.zeros((LVP, BT), dtype=tl.float32)
    zero_w = tl.zeros((BT, LTP), dtype=tl.float32)
    if ONE_SIDED:
        if TEXT_FIRST:
            u, w = _update_visual(logk, zero_w, la2, vm2), zero_w
        else:
            u, w = zero_u, _update_text(logk, zero_u, lb3, tm3)
    else:
        last = (iterations - 1) * size
        u, w = tl.load(save_ptr + u_off + last), tl.load(save_ptr + w_off + last)
    flow = tl.where(valid3, tl.exp2(logk + u[:, :, None] + w[None, :, :]), 0.0)
    gs = g[None, :, None]
    ds = gs * flow  # d score / d sim through Σ flow·sim directly
    dlogk = gs * flow * tl.where(valid3, s3, 0.0)  # ... and through the flow: d flow = sim
    du = tl.sum(dlogk, axis=2)
    dw = tl.sum(dlogk, axis=0)
    dla = zero_u
    dlb = zero_w
    if ONE_SIDED:
        if TEXT_FIRST:  # u = la − LSE_w(logk)
            soft = tl.where(valid3, tl.exp2(logk + u[:, :, None] - la2[:, :, None]), 0.0)
            dla += du
            dlogk -= soft * du[:, :, None]
        else:  # w = lb − LSE_r(logk)
            soft = tl.where(valid3, tl.exp2(logk + w[None, :, :] - lb3[None, :, :]), 0.0)
            dlb += dw
            dlogk -= soft * dw[None, :, :]
    else:
        for j in range(iterations):
            k = iterations - 1 - j  # 0-based iteration, newest first
            u = tl.load(save_ptr + u_off + k * size)
            w = tl.load(save_ptr + w_off + k * size)
            if TEXT_FIRST:
                # u_k = la − LSE_w(logk + w_k)
                soft = tl.where(valid3, tl.exp2(logk + u[:, :, None] + w[None, :, :] - la2[:, :, None]), 0.0)
                dla += du
                dlogk -= soft * du[:, :, None]
                dw -= tl.sum(soft * du[:, :, None], axis=0)
                # w_k = lb − LSE_r(logk + u_{k−1})
                u_prev = tl.load(save_ptr + u_off + (k - 1) * size, mask=(u_off >= 0) & (k > 0), other=0.0)
                soft = tl.where(valid3, tl.exp2(logk + u_prev[:, :, None] + w[None, :, :] - lb3[None, :, :]), 0.0)
                dlb += dw
                dlogk -= soft * dw[None, :, :]
                du = -tl.sum(soft * dw[None, :, :], axis=2)
                dw = zero_w
            else:
                # w_k = lb − LSE_r(logk + u_k)
                soft = tl.where(valid3, tl.exp2(logk + u[:, :, None] + w[None, :, :] - lb3[None, :, :]), 0.0)
                dlb += dw
                dlogk -= soft * dw[None, :, :]
                du -= tl.sum(soft * dw[None, :, :], axis=2)
                # u_k = la − LSE_w(logk + w_{k−1})
                w_prev = tl.load(save_ptr + w_off + (k - 1) * size, mask=(w_off >= 0) & (k > 0), other=0.0)
                soft = tl.where(valid3, tl.exp2(logk + u[:, :, None] + w_prev[None, :, :] - la2[:, :, None]), 0.0)
                dla += du
                dlogk -= soft * du[:, :, None]
                dw = -tl.sum(soft * du[:, :, None], axis=0)
                du = zero_u
    ds += tl.where(valid3, dlogk * inv_eps, 0.0)  # logk = (sim − 1)/ε (natural units)
    dla = tl.where(vm2, dla, 0.0)
    dlb = tl.where(tm3, dlb, 0.0)
    rows = tl.arange(0, LVP)
    row_in = rows < Lv
    cols = tl.arange(0, BT * LTP)
    cap = it0 + cols // LTP
    ctok = cols % LTP
    col_in = (cap < Nt) & (ctok < Lt)
    if IMPORTANCE:
        # la = log_softmax(region/τ): d region = (dla − a·Σ dla)/τ; same for the words.
        a = tl.where(vm2, tl.exp2(la2), 0.0)
        b = tl.where(tm3, tl.exp2(lb3), 0.0)
        dregion = (dla - a * tl.sum(dla, axis=0)[None, :]) * inv_tau  # (LVP, BT)
        dword = tl.reshape((dlb - b * tl.sum(dlb, axis=1)[:, None]) * inv_tau, (BT * LTP,))
    elif NEED_DM:
        tl.atomic_add(dla_ptr + iv0 * Lv + rows, tl.sum(dla, axis=1), mask=row_in)
        tl.atomic_add(dlb_ptr + cap * Lt + ctok, tl.reshape(dlb, (BT * LTP,)), mask=col_in)
    ds2 = tl.reshape(ds, (LVP, BT * LTP))
    a_base = v_ptr + iv0.to(tl.int64) * s_vn + rows * s_vl
    b_base = t_ptr + cap.to(tl.int64) * s_tn + ctok * s_tl
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        kin = kk < D
        va = tl.load(a_base[:, None] + kk[None, :] * s_vd, mask=row_in[:, None] & kin[None, :], other=0.0)
        tb = tl.load(b_base[:, None] + kk[None, :] * s_td, mask=col_in[:, None] & kin[None, :], other=0.0)
        dv = tl.dot(ds2.to(tb.dtype), tb, input_precision=PREC)  # (LVP, BK)
        dt = tl.dot(tl.trans(ds2).to(va.dtype), va, input_precision=PREC)  # (BT·LTP, BK)
        if IMPORTANCE:
            tp = tl.load(
                tp_ptr + caps[:, None].to(tl.int64) * s_tpn + kk[None, :] * s_tpd,
                mask=(caps[:, None] < Nt) & kin[None, :],
                other=0.0,
            ).to(tl.float32)  # (BT, BK)
            vp = tl.load(vp_ptr + iv0.to(tl.int64) * s_vpn + kk * s_vpd, mask=kin, other=0.0).to(tl.float32)
            dv += tl.sum(dregion[:, :, None] * tp[None, :, :], axis=1)
            dt += dword[:, None] * vp[None, :]
            if NEED_DM:
                dtp = tl.sum(dregion[:, :, None] * va.to(tl.float32)[:, None, :], axis=0)  # (BT, BK)
                tl.atomic_add(
                    dtp_ptr + caps[:, None].to(tl.int64) * D + kk[None, :],
                    dtp,
                    mask=(caps[:, None] < Nt) & kin[None, :],
                )
                dvp = tl.sum(dword[:, None] * tb.to(tl.float32), axis=0)  # (BK,)
                tl.atomic_add(dvp_ptr + iv0.to(tl.int64) * D + kk, dvp, mask=kin)
        if NEED_DV:
            tl.atomic_add(
                dv_ptr + (iv0.to(tl.int64) * Lv + rows)[:, None] * D + kk[None, :],
                dv,
                mask=row_in[:, None] & kin[None, :],
            )
        if NEED_DT:
            tl.atomic_add(
                dt_ptr + (cap.to(tl.int64) * Lt + ctok)[:, None] * D + kk[None, :],
                dt,
                mask=col_in[:, None] & kin[None, :],
            )


class _SinkhornFlow(torch.autograd.Function):
    """Σ flow·sim with the fused kernels both ways: the forward saves every iteration's
    potentials (grid × iterations × (LVP·BT + BT·LTP) floats), the backward reverses them."""

    @staticmethod
    def forward(ctx, v, t, la, lb, vp, tp, vmask8, tmask8, launch: SinkhornLaunch):
        out, saved = torch.ops.finealign.sinkhorn_forward_saving(
            v, t, vmask8, tmask8, la, lb, vp, tp, *launch.op_args()
        )
        ctx.save_for_backward(v, t, la, lb, vp, tp, vmask8, tmask8, saved)
        ctx.launch = launch
        return out

    @staticmethod
    def backward(ctx, grad):
        v, t, la, lb, vp, tp, vmask8, tmask8, saved = ctx.saved_tensors
        launch: SinkhornLaunch = ctx.launch
        need = ctx.needs_input_grad
        need_dm = any(need[4:6]) if launch.importance else any(need[2:4])
        dv, dt, dmv, dmt = torch.ops.finealign.sinkhorn_backward(
            v,
            t,
            vmask8,
            tmask8,
            la,
            lb,
            vp,
            tp,
            grad.float().contiguous(),
            saved,
            *launch.op_args(),
            [int(need[0]), int(need[1]), int(need_dm)],
        )
        grads = [dv.to(v.dtype) if need[0] else None, dt.to(t.dtype) if need[1] else None, None, None, None, None]
        slot, like = (4, (vp, tp)) if launch.importance else (2, (la, lb))
        for i, (g, x) in enumerate(zip((dmv, dmt), like)):
            grads[slot + i] = g.to(x.dtype) if need[slot + i] else None
        return (*grads, None, None, None)


def sinkhorn_triton(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    options: SinkhornOptions,
    *,
    log_visual: Tensor | None = None,
    log_text: Tensor | None = None,
    visual_pooled: Tensor | None = None,
    text_pooled: Tensor | None = None,
    pairs: Tensor | None = None,
) -> Tensor:
    """(Nv, Nt) fp32 Σ flow·sim, or (P,) for the listed `pairs`, solved as `options` says (checked
    when it was built; flattened to scalars only for the custom ops). Marginals: the given (N, L)
    log masses (padding ignored), or, with pooled vectors, TokenFlow's per-pair importance softmax
    (log_* are then ignored). domain="scaling" iterates on exp(−C/ε) with multiply-adds (see
    _scaling_sinkhorn); pairs it flags (sums below 1e-30, from ε small against the spread of the
    similarities) are recomputed here in the log domain, so both domains give the same numbers."""
    importance = visual_pooled is not None
    if visual_pooled is None:
        vp, tp = v.new_zeros(1, 1), t.new_zeros(1, 1)  # unused placeholders
        assert log_visual is not None and log_text is not None, "log masses or pooled vectors are needed"
        la, lb = log_visual.float().contiguous(), log_text.float().contiguous()
    else:
        assert text_pooled is not None, "pooled vectors come in pairs (kernels/api.py checks)"
        vp, tp = visual_pooled, text_pooled
        la, lb = vmask.new_zeros(1, dtype=torch.float32), tmask.new_zeros(1, dtype=torch.float32)
    vmask8, tmask8 = vmask.to(torch.int8).contiguous(), tmask.to(torch.int8).contiguous()
    if pairs is None and torch.is_grad_enabled() and any(x.requires_grad for x in (v, t, la, lb, vp, tp)):
        # Training: the log-domain kernel saves its iterates and the backward kernel uses them.
        launch = SinkhornLaunch.of(options, importance=importance, scaling=False)
        return _SinkhornFlow.apply(v, t, la, lb, vp, tp, vmask8, tmask8, launch)
    launch = SinkhornLaunch.of(options, importance=importance, scaling=options.domain == "scaling")
    kernel_pairs = None if pairs is None else pairs.to(torch.int32).contiguous()
    out = torch.ops.finealign.sinkhorn_forward(v, t, vmask8, tmask8, la, lb, vp, tp, kernel_pairs, *launch.op_args())
    if launch.scaling and not launch.one_sided:
        flagged = torch.isnan(out)  # one device sync: the price of the fallback
        if bool(flagged.any()):
            index = flagged.nonzero()
            redo = index if pairs is None else pairs[index[:, 0]]
            out[flagged] = sinkhorn_triton(
                v,
                vmask,
                t,
                tmask,
                dataclasses.replace(options, domain="log"),
                log_visual=log_visual,
                log_text=log_text,
                visual_pooled=visual_pooled,
                text_pooled=text_pooled,
                pairs=redo,
            )
    return out


def _layout(v, t, pairs, captions_per_program, num_warps):
    """Token blocks, captions per program, warps and grid of one launch (0 = the defaults)."""
    nv, lv, _ = v.shape
    nt, lt, _ = t.shape
    # tl.dot needs at least 16 rows and columns per tile.
    lvp, ltp = max(16, next_pow2(lv)), next_pow2(lt)
    # One caption per program, and a single warp for a 64 × 32 problem: on an H200 that was the
    # fastest (benchmarks/gpu_notes.md): the per-iteration reductions then stay inside one warp.
    bt = 1 if pairs is not None else (captions_per_program or 1)
    bt = max(bt, -(-16 // ltp))  # tl.dot needs ≥ 16 columns
    warps = num_warps or min(8, next_pow2(max(1, lvp * bt * ltp // 2048)))
    grid = (pairs.shape[0],) if pairs is not None else (nv * triton.cdiv(nt, bt),)
    return lvp, ltp, bt, warps, grid


def _strides(v, t, vp, tp):
    return (*v.stride(), *t.stride(), *vp.stride(), *tp.stride())


def launch_sinkhorn(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    la: Tensor,
    lb: Tensor,
    vp: Tensor,
    tp: Tensor,
    pairs: Tensor | None,
    launch: SinkhornLaunch,
    save: bool = False,
) -> tuple[Tensor, Tensor]:
    """finealign::sinkhorn_forward: one launch of the fused kernel (0 = default for the last two).
    Returns the scores and, with `save` (training), every iteration's potentials (else empty)."""
    nv, lv, d = v.shape
    nt, lt, _ = t.shape
    lvp, ltp, bt, warps, grid = _layout(v, t, pairs, launch.captions_per_program, launch.num_warps)
    shape = (nv, nt) if pairs is None else (pairs.shape[0],)
    out = torch.empty(shape, dtype=torch.float32, device=v.device)
    keep = save and not launch.one_sided
    saved = torch.empty(
        grid[0] * launch.iterations * (lvp * bt + bt * ltp) if keep else 0, dtype=torch.float32, device=v.device
    )
    if grid[0] == 0:
        return out, saved
    _sinkhorn_fwd[grid](
        v,
        t,
        vmask8,
        tmask8,
        la,
        lb,
        vp,
        tp,
        out,
        out if pairs is None else pairs,
        saved if keep else out,
        nv,
        nt,
        lv,
        lt,
        d,
        *_strides(v, t, vp, tp),
        1.0 / launch.epsilon,
        1.0 / launch.marginal_temperature,
        launch.iterations,
        LVP=lvp,
        BT=bt,
        LTP=ltp,
        BK=32 if v.dtype == torch.float32 else 64,
        PREC=dot_precision(v.dtype),
        TEXT_FIRST=launch.text_first,
        ONE_SIDED=launch.one_sided,
        IMPORTANCE=launch.importance,
        PAIRS=pairs is not None,
        SCALING=launch.scaling and not keep,
        ABSORB=launch.absorb_every,
        SAVE=keep,
        num_warps=warps,
        num_stages=2,
    )
    return out, saved


def launch_sinkhorn_backward(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    la: Tensor,
    lb: Tensor,
    vp: Tensor,
    tp: Tensor,
    grad: Tensor,
    saved: Tensor,
    launch: SinkhornLaunch,
    need: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """finealign::sinkhorn_backward: fp32 gradients of v, t and the marginals' inputs — log
    marginals (la, lb) or, for importance marginals, the pooled vectors (vp, tp) — from the
    potentials `saved` by the forward. Empty tensors for what `need` (dv, dt, marginals) omits."""
    nv, lv, d = v.shape
    nt, lt, _ = t.shape
    lvp, ltp, bt, warps, grid = _layout(v, t, None, launch.captions_per_program, launch.num_warps)
    need_dv, need_dt, need_dm = map(bool, need)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device) if need_dv else v.new_empty(0)
    dt = torch.zeros(t.shape, dtype=torch.float32, device=t.device) if need_dt else t.new_empty(0)
    dm_visual, dm_text = (vp, tp) if launch.importance else (la, lb)
    dmv = torch.zeros(dm_visual.shape, dtype=torch.float32, device=v.device) if need_dm else v.new_empty(0)
    dmt = torch.zeros(dm_text.shape, dtype=torch.float32, device=v.device) if need_dm else v.new_empty(0)
    if grid[0]:
        placeholder = dv if need_dv else torch.empty(1, device=v.device)
        _sinkhorn_bwd[grid](
            v,
            t,
            vmask8,
            tmask8,
            la,
            lb,
            vp,
            tp,
            grad,
            saved if saved.numel() else placeholder,
            dv if need_dv else placeholder,
            dt if need_dt else placeholder,
            dmv if need_dm else placeholder,
            dmt if need_dm else placeholder,
            dmv if need_dm else placeholder,
            dmt if need_dm else placeholder,
            nv,
            nt,
            lv,
            lt,
            d,
            *_strides(v, t, vp, tp),
            1.0 / launch.epsilon,
            1.0 / launch.marginal_temperature,
            launch.iterations,
            LVP=lvp,
            BT=bt,
            LTP=ltp,
            BK=32 if v.dtype == torch.float32 else 64,
            PREC=dot_precision(v.dtype),
            TEXT_FIRST=launch.text_first,
            ONE_SIDED=launch.one_sided,
            IMPORTANCE=launch.importance,
            NEED_DV=need_dv,
            NEED_DT=need_dt,
            NEED_DM=need_dm,
            num_warps=warps,
            num_stages=2,
        )
    return dv, dt, dmv, dmt

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
    v_ptr, t_ptr, vm_ptr, tm_ptr, la_ptr, lb_ptr, vp_ptr, tp_ptr, out_ptr,
    Nv, Nt, Lv, Lt, D, s_vn, s_vl, s_vd, s_tn, s_tl, s_td, s_vpn, s_vpd, s_tpn, s_tpd,
    inv_eps, inv_tau, iterations,
    LVP: tl.constexpr, BT: tl.constexpr, LTP: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    TEXT_FIRST: tl.constexpr, ONE_SIDED: tl.constexpr, IMPORTANCE: tl.constexpr,
):
    pid = tl.program_id(0)
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
    if ONE_SIDED:
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
    it = it0 + tl.arange(0, BT)
    tl.store(out_ptr + iv0 * Nt + it, score, mask=it < Nt)


def sinkhorn_triton(
    v: Tensor, vmask: Tensor, t: Tensor, tmask: Tensor, log_visual: Tensor | None, log_text: Tensor | None,
    epsilon: float, iterations: int, rows: str, one_sided: bool, captions_per_program: int | None = None,
    visual_pooled: Tensor | None = None, text_pooled: Tensor | None = None, marginal_temperature: float = 0.1,
    num_warps: int | None = None,
) -> Tensor:
    """(Nv, Nt) fp32 Σ flow·sim. Marginals: the given (N, L) log masses (padding ignored), or, with
    pooled vectors, TokenFlow's per-pair importance softmax (log_* are then ignored)."""
    importance = visual_pooled is not None
    if not importance:
        visual_pooled, text_pooled = v.new_zeros(1, 1), t.new_zeros(1, 1)  # unused placeholders
    else:
        log_visual, log_text = vmask.new_zeros(1, dtype=torch.float32), tmask.new_zeros(1, dtype=torch.float32)
    nv, lv, d = v.shape
    nt, lt, _ = t.shape
    # tl.dot needs at least 16 rows and columns per tile.
    lvp, ltp = max(16, next_pow2(lv)), next_pow2(lt)
    # One caption per program, and a single warp for a 64 × 32 problem: on an H200 that was the
    # fastest (benchmarks/gpu_notes.md): the per-iteration reductions then stay inside one warp.
    bt = max(captions_per_program or 1, -(-16 // ltp))  # tl.dot needs ≥ 16 columns
    warps = num_warps or min(8, next_pow2(max(1, lvp * bt * ltp // 2048)))
    out = torch.empty(nv, nt, dtype=torch.float32, device=v.device)
    grid = (nv * triton.cdiv(nt, bt),)
    _sinkhorn_fwd[grid](
        v, t, vmask.to(torch.int8).contiguous(), tmask.to(torch.int8).contiguous(),
        log_visual.float().contiguous(), log_text.float().contiguous(), visual_pooled, text_pooled, out,
        nv, nt, lv, lt, d, *v.stride(), *t.stride(), *visual_pooled.stride(), *text_pooled.stride(),
        1.0 / float(epsilon), 1.0 / float(marginal_temperature), int(iterations),
        LVP=lvp, BT=bt, LTP=ltp, BK=32 if v.dtype == torch.float32 else 64, PREC=_precision(v.dtype),
        TEXT_FIRST=rows == "text", ONE_SIDED=bool(one_sided), IMPORTANCE=importance,
        num_warps=warps, num_stages=2,
    )
    return out

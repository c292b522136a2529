"""Fused MaxSim on the GPU: token similarities are tiled on chip, reduced (max over regions per
word and/or over words per region), masked and pooled in registers; only one score per
(image, caption) pair is written. The token-pair tensor (Nv, Nt, Lv, Lt) never exists in memory.

Backward recomputes the tile's similarities, sends each pair's gradient to the arg-max token
pairs (split evenly between exact ties, as torch.amax does) and accumulates the token gradients
with atomic adds, so extra memory stays O(Nv·Nt) plus the gradients themselves.

Import this module only after deciding on TRITON_INTERPRET: Triton reads it when a kernel is
decorated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from finealign.kernels.pooling_weights import mean_weights
from finealign.kernels.tiles import Tiles, next_pow2, tile_list
from finealign.kernels.triton_common import dot_precision, dot_rows, sim_tile


@triton.jit
def _pool_text(s4, tm3, w3, temperature, LSE: tl.constexpr):
    """Best region per word (BV, BT, LTP) and its pool over real words (BV, BT)."""
    best = tl.max(s4, axis=1)
    if LSE:
        m = tl.max(tl.where(tm3, best, float("-inf")), axis=2)
        m = tl.where(m == float("-inf"), 0.0, m)  # tiles past the end of the batch
        e = tl.where(tm3, tl.exp((best - m[:, :, None]) / temperature), 0.0)
        pooled = temperature * tl.log(tl.sum(e, axis=2)) + m
    else:
        pooled = tl.sum(tl.where(tm3, best * w3, 0.0), axis=2)
    return best, pooled


@triton.jit
def _pool_visual(s4, vm3, w3, temperature, LSE: tl.constexpr):
    """Best word per region (BV, LVP, BT) and its pool over real regions (BV, BT)."""
    best = tl.max(s4, axis=3)
    if LSE:
        m = tl.max(tl.where(vm3, best, float("-inf")), axis=1)
        m = tl.where(m == float("-inf"), 0.0, m)
        e = tl.where(vm3, tl.exp((best - m[:, None, :]) / temperature), 0.0)
        pooled = temperature * tl.log(tl.sum(e, axis=1)) + m
    else:
        pooled = tl.sum(tl.where(vm3, best * w3, 0.0), axis=1)
    return best, pooled


@triton.jit
def _tile_ids(Nv, Nt, BV: tl.constexpr, BT: tl.constexpr, GROUP: tl.constexpr):
    """Grouped launch order: GROUP visual blocks sweep the text blocks together (L2 reuse)."""
    pid = tl.program_id(0)
    nbv = tl.cdiv(Nv, BV)
    nbt = tl.cdiv(Nt, BT)
    width = GROUP * nbt
    first = (pid // width) * GROUP
    size = tl.minimum(nbv - first, GROUP)
    pid_v = first + (pid % width) % size
    pid_t = (pid % width) // size
    return pid_v * BV, pid_t * BT


@triton.jit
def _pool(best, mask, w, temperature, axis: tl.constexpr, LSE: tl.constexpr):
    """Pool `best` over `axis`, real entries only (`mask`, `w` broadcast to `best`)."""
    if LSE:
        m = tl.max(tl.where(mask, best, float("-inf")), axis=axis)
        m = tl.where(m == float("-inf"), 0.0, m)  # tiles past the end of the batch
        e = tl.where(mask, tl.exp((best - tl.expand_dims(m, axis)) / temperature), 0.0)
        return temperature * tl.log(tl.sum(e, axis=axis)) + m
    return tl.sum(tl.where(mask, best * w, 0.0), axis=axis)


@triton.jit
def _maxsim_fwd(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    tw_ptr,
    vw_ptr,
    out_ptr,
    pairs_ptr,
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
    temperature,
    BV: tl.constexpr,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    GROUP: tl.constexpr,
    DO_TEXT: tl.constexpr,
    DO_VISUAL: tl.constexpr,
    LSE: tl.constexpr,
    PAIRS: tl.constexpr,
):
    # The tile is computed transposed, words × regions: the max over an image's regions (the
    # common "text" direction) then runs along the accumulator's columns, mostly inside each
    # thread, instead of across lanes and warps.
    if PAIRS:
        # One listed (image, caption) pair per program (BV = BT = 1); its score goes to out[pid].
        pid = tl.program_id(0)
        iv0 = tl.load(pairs_ptr + 2 * pid)
        it0 = tl.load(pairs_ptr + 2 * pid + 1)
    else:
        iv0, it0 = _tile_ids(Nv, Nt, BV, BT, GROUP)
    acc_t, tm, vm = sim_tile(
        t_ptr,
        v_ptr,
        tm_ptr,
        vm_ptr,
        it0,
        iv0,
        Nt,
        Nv,
        Lt,
        Lv,
        D,
        s_tn,
        s_tl,
        s_td,
        s_vn,
        s_vl,
        s_vd,
        BT,
        LTP,
        BV,
        LVP,
        BK,
        PREC,
    )
    s4 = tl.reshape(tl.where(tm[:, None] & vm[None, :], acc_t, float("-inf")), (BT, LTP, BV, LVP))
    iv = iv0 + tl.arange(0, BV)
    it = it0 + tl.arange(0, BT)
    score = tl.zeros((BT, BV), dtype=tl.float32)
    if DO_TEXT:
        cols = tl.arange(0, BT * LTP)
        tw = tl.load(
            tw_ptr + (it0 * Lt + (cols // LTP) * Lt + cols % LTP),
            mask=(it0 + cols // LTP < Nt) & (cols % LTP < Lt),
            other=0.0,
        )
        best = tl.max(s4, axis=3)  # (BT, LTP, BV): each word's best region
        score += _pool(
            best, tl.reshape(tm, (BT, LTP))[:, :, None], tl.reshape(tw, (BT, LTP))[:, :, None], temperature, 1, LSE
        )
    if DO_VISUAL:
        rows = tl.arange(0, BV * LVP)
        vw = tl.load(
            vw_ptr + (iv0 * Lv + (rows // LVP) * Lv + rows % LVP),
            mask=(iv0 + rows // LVP < Nv) & (rows % LVP < Lv),
            other=0.0,
        )
        best = tl.max(s4, axis=1)  # (BT, BV, LVP): each region's best word
        score += _pool(
            best, tl.reshape(vm, (BV, LVP))[None, :, :], tl.reshape(vw, (BV, LVP))[None, :, :], temperature, 2, LSE
        )
    if DO_TEXT and DO_VISUAL:
        score = score * 0.5
    if PAIRS:
        tl.store(out_ptr + pid + tl.zeros((BT, BV), dtype=tl.int32), score)
    else:
        tl.store(out_ptr + iv[None, :] * Nt + it[:, None], score, mask=(iv[None, :] < Nv) & (it[:, None] < Nt))


@triton.jit
def _packed_sim_tile(
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
    BV: tl.constexpr,
    NP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
):
    """Words × regions tile whose columns are BV images' Lv regions back to back (NP ≥ BV·Lv,
    padding only at the end), so 5 images of 50 regions fill 250 of 256 columns instead of
    being padded to 64 each. Returns the fp32 tile, each column's image slot (≥ BV on the
    tail padding) and the token masks."""
    cols = tl.arange(0, NP)
    slot = cols // Lv
    img = iv0 + slot
    rtok = cols % Lv
    col_in = (slot < BV) & (img < Nv)
    rows = tl.arange(0, BT * LTP)
    cap = it0 + rows // LTP
    ctok = rows % LTP
    row_in = (cap < Nt) & (ctok < Lt)
    a_base = t_ptr + cap.to(tl.int64) * s_tn + ctok * s_tl
    b_base = v_ptr + img.to(tl.int64) * s_vn + rtok * s_vl
    acc = dot_rows(a_base, b_base, row_in, col_in, s_td, s_vd, D, BT * LTP, NP, BK, PREC)
    vm = tl.load(vm_ptr + img * Lv + rtok, mask=col_in, other=0) != 0
    tm = tl.load(tm_ptr + cap * Lt + ctok, mask=row_in, other=0) != 0
    return acc, slot, vm, tm


@triton.jit
def _maxsim_packed_fwd(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    tw_ptr,
    vw_ptr,
    out_ptr,
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
    temperature,
    BV: tl.constexpr,
    NP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    GROUP: tl.constexpr,
    DO_TEXT: tl.constexpr,
    DO_VISUAL: tl.constexpr,
    LSE: tl.constexpr,
    BVP: tl.constexpr,
    G: tl.constexpr,
):
    """The forward of _maxsim_fwd on packed tiles (_packed_sim_tile): an image's regions are a
    run of columns, not a power-of-two block, so each image's reductions are masked passes over
    the tile (one per image slot) instead of a reshape."""
    iv0, it0 = _tile_ids(Nv, Nt, BV, BT, GROUP)
    acc, slot, vm, tm = _packed_sim_tile(
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
        BV,
        NP,
        BT,
        LTP,
        BK,
        PREC,
    )
    s = tl.where(tm[:, None] & vm[None, :], acc, float("-inf"))  # (BT·LTP, NP)
    rows = tl.arange(0, BT * LTP)
    tw = tl.load(
        tw_ptr + (it0 * Lt + (rows // LTP) * Lt + rows % LTP),
        mask=(it0 + rows // LTP < Nt) & (rows % LTP < Lt),
        other=0.0,
    )
    tm2, tw2 = tl.reshape(tm, (BT, LTP)), tl.reshape(tw, (BT, LTP))
    cols = tl.arange(0, NP)
    vw = tl.load(vw_ptr + iv0 * Lv + cols, mask=(slot < BV) & (iv0 + slot < Nv), other=0.0)
    if DO_VISUAL:
        region_best = tl.max(tl.reshape(s, (BT, LTP, NP)), axis=1)  # (BT, NP): each region's best word
    slots = tl.arange(0, BVP)  # BV need not be a power of two (5 images × 50 regions)
    score = tl.zeros((BT, BVP), dtype=tl.float32)
    if DO_TEXT:
        # Runs of G columns never straddle two images (G divides Lv): max over each run first, in
        # registers (an MMA fragment holds neighbouring columns), so the per-image passes below
        # scan NP/G columns instead of NP.
        s_g = tl.max(tl.reshape(s, (BT * LTP, NP // G, G)), axis=2)
        slot_g = (tl.arange(0, NP // G) * G) // Lv
    for k in tl.static_range(BV):
        part = tl.zeros((BT,), dtype=tl.float32)
        if DO_TEXT:
            word_best = tl.max(tl.where(slot_g[None, :] == k, s_g, float("-inf")), axis=1)  # (BT·LTP,)
            part += _pool(tl.reshape(word_best, (BT, LTP)), tm2, tw2, temperature, 1, LSE)
        if DO_VISUAL:
            mine = ((slot == k) & vm)[None, :]
            part += _pool(region_best, mine, vw[None, :], temperature, 1, LSE)
        score = tl.where(slots[None, :] == k, part[:, None], score)
    if DO_TEXT and DO_VISUAL:
        score = score * 0.5
    iv = iv0 + slots
    it = it0 + tl.arange(0, BT)
    keep = (slots[None, :] < BV) & (iv[None, :] < Nv) & (it[:, None] < Nt)
    tl.store(out_ptr + iv[None, :] * Nt + it[:, None], score, mask=keep)


@triton.jit
def _maxsim_bwd(
    v_ptr,
    t_ptr,
    vm_ptr,
    tm_ptr,
    tw_ptr,
    vw_ptr,
    g_ptr,
    dv_ptr,
    dt_ptr,
    dtw_ptr,
    dvw_ptr,
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
    temperature,
    BV: tl.constexpr,
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    GROUP: tl.constexpr,
    DO_TEXT: tl.constexpr,
    DO_VISUAL: tl.constexpr,
    LSE: tl.constexpr,
    NEED_DV: tl.constexpr,
    NEED_DT: tl.constexpr,
    NEED_DTW: tl.constexpr,
    NEED_DVW: tl.constexpr,
):
    iv0, it0 = _tile_ids(Nv, Nt, BV, BT, GROUP)
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
        BV,
        LVP,
        BT,
        LTP,
        BK,
        PREC,
    )
    valid = vm[:, None] & tm[None, :]
    s4 = tl.reshape(tl.where(valid, acc, float("-inf")), (BV, LVP, BT, LTP))
    valid4 = tl.reshape(valid, (BV, LVP, BT, LTP))
    iv = iv0 + tl.arange(0, BV)
    it = it0 + tl.arange(0, BT)
    pair_in = (iv[:, None] < Nv) & (it[None, :] < Nt)
    g = tl.load(g_ptr + iv[:, None] * Nt + it[None, :], mask=pair_in, other=0.0)  # (BV, BT)
    if DO_TEXT and DO_VISUAL:
        g = g * 0.5
    rows = tl.arange(0, BV * LVP)
    cols = tl.arange(0, BT * LTP)
    ds4 = tl.zeros((BV, LVP, BT, LTP), dtype=tl.float32)
    if DO_TEXT:
        tm3 = tl.reshape(tm, (BT, LTP))[None, :, :]
        tw = tl.load(
            tw_ptr + (it0 * Lt + (cols // LTP) * Lt + cols % LTP),
            mask=(it0 + cols // LTP < Nt) & (cols % LTP < Lt),
            other=0.0,
        )
        tw3 = tl.reshape(tw, (BT, LTP))[None, :, :]
        best, pooled = _pool_text(s4, tm3, tw3, temperature, LSE)
        if LSE:
            coef = tl.exp((best - pooled[:, :, None]) / temperature)  # softmax over words
        else:
            coef = tw3 + tl.zeros_like(best)
        keep = tm3 & pair_in[:, :, None]
        coef = tl.where(keep, coef * g[:, :, None], 0.0)
        hot = (s4 == best[:, None, :, :]) & valid4
        ties = tl.maximum(tl.sum(hot.to(tl.float32), axis=1), 1.0)
        ds4 += tl.where(hot, (coef / ties)[:, None, :, :], 0.0)
        if NEED_DTW:
            dtw = tl.sum(tl.where(keep, best * g[:, :, None], 0.0), axis=0)  # (BT, LTP)
            tl.atomic_add(
                dtw_ptr + (it0 * Lt + (cols // LTP) * Lt + cols % LTP),
                tl.reshape(dtw, (BT * LTP,)),
                mask=(it0 + cols // LTP < Nt) & (cols % LTP < Lt),
            )
    if DO_VISUAL:
        vm3 = tl.reshape(vm, (BV, LVP))[:, :, None]
        vw = tl.load(
            vw_ptr + (iv0 * Lv + (rows // LVP) * Lv + rows % LVP),
            mask=(iv0 + rows // LVP < Nv) & (rows % LVP < Lv),
            other=0.0,
        )
        vw3 = tl.reshape(vw, (BV, LVP))[:, :, None]
        best, pooled = _pool_visual(s4, vm3, vw3, temperature, LSE)
        if LSE:
            coef = tl.exp((best - pooled[:, None, :]) / temperature)
        else:
            coef = vw3 + tl.zeros_like(best)
        keep = vm3 & pair_in[:, None, :]
        coef = tl.where(keep, coef * g[:, None, :], 0.0)
        hot = (s4 == best[:, :, :, None]) & valid4
        ties = tl.maximum(tl.sum(hot.to(tl.float32), axis=3), 1.0)
        ds4 += tl.where(hot, (coef / ties)[:, :, :, None], 0.0)
        if NEED_DVW:
            dvw = tl.sum(tl.where(keep, best * g[:, None, :], 0.0), axis=2)  # (BV, LVP)
            tl.atomic_add(
                dvw_ptr + (iv0 * Lv + (rows // LVP) * Lv + rows % LVP),
                tl.reshape(dvw, (BV * LVP,)),
                mask=(iv0 + rows // LVP < Nv) & (rows % LVP < Lv),
            )
    if NEED_DV or NEED_DT:
        ds = tl.reshape(ds4, (BV * LVP, BT * LTP))
        img = iv0 + rows // LVP
        rtok = rows % LVP
        row_in = (img < Nv) & (rtok < Lv)
        cap = it0 + cols // LTP
        ctok = cols % LTP
        col_in = (cap < Nt) & (ctok < Lt)
        a_base = v_ptr + img.to(tl.int64) * s_vn + rtok * s_vl
        b_base = t_ptr + cap.to(tl.int64) * s_tn + ctok * s_tl
        for k in range(0, D, BK):
            kk = k + tl.arange(0, BK)
            kin = kk < D
            if NEED_DV:
                b = tl.load(b_base[:, None] + kk[None, :] * s_td, mask=col_in[:, None] & kin[None, :], other=0.0)
                dv = tl.dot(ds.to(b.dtype), b, input_precision=PREC)  # (BV·LVP, BK)
                tl.atomic_add(
                    dv_ptr + (img.to(tl.int64) * Lv + rtok)[:, None] * D + kk[None, :],
                    dv,
                    mask=row_in[:, None] & kin[None, :],
                )
            if NEED_DT:
                a = tl.load(a_base[:, None] + kk[None, :] * s_vd, mask=row_in[:, None] & kin[None, :], other=0.0)
                dt = tl.dot(tl.trans(ds).to(a.dtype), a, input_precision=PREC)  # (BT·LTP, BK)
                tl.atomic_add(
                    dt_ptr + (cap.to(tl.int64) * Lt + ctok)[:, None] * D + kk[None, :],
                    dt,
                    mask=col_in[:, None] & kin[None, :],
                )


def _launch(kernel, v, t, vmask8, tmask8, tw, vw, extra, pooling, direction, temperature, tiles, **consts):
    nv, lv, d = v.shape
    nt, lt, _ = t.shape
    tiles = tiles or Tiles.default(lv, lt, v.dtype)
    grid = (triton.cdiv(nv, tiles.items_visual) * triton.cdiv(nt, tiles.items_text),)
    lvp, ltp = next_pow2(lv), next_pow2(lt)
    if tiles.packed:  # only the full forward gets packed tiles (backward and pair launches never do)
        kernel, extra = _maxsim_packed_fwd, extra[:1]  # no pairs pointer
        np_ = next_pow2(tiles.items_visual * lv)
        run = min(lv & -lv, np_, 8)  # the largest power of two dividing Lv (capped): G
        consts = {k: x for k, x in consts.items() if k != "PAIRS"} | dict(BVP=next_pow2(tiles.items_visual), G=run)
    if consts.get("PAIRS"):
        # One pair per program; tl.dot needs at least 16 rows and columns, the extra are masked.
        grid, lvp, ltp = (consts.pop("n_pairs"),), max(16, lvp), max(16, ltp)
    kernel[grid](
        v,
        t,
        vmask8,
        tmask8,
        tw,
        vw,
        *extra,
        nv,
        nt,
        lv,
        lt,
        d,
        *v.stride(),
        *t.stride(),
        float(temperature),
        BV=tiles.items_visual,
        BT=tiles.items_text,
        LTP=ltp,
        BK=tiles.block_k,
        **(dict(NP=np_) if tiles.packed else dict(LVP=lvp)),
        PREC=dot_precision(v.dtype),
        GROUP=tiles.group,
        DO_TEXT=direction in ("text", "both"),
        DO_VISUAL=direction in ("visual", "both"),
        LSE=pooling == "lse",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **consts,
    )


class _MaxSim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, t, text_weights, visual_weights, vmask, tmask, pooling, direction, temperature, tiles):
        vmask8, tmask8 = vmask.to(torch.int8).contiguous(), tmask.to(torch.int8).contiguous()
        tw, vw = text_weights.float().contiguous(), visual_weights.float().contiguous()
        out = torch.ops.finealign.maxsim_forward(
            v, t, vmask8, tmask8, tw, vw, None, pooling, direction, float(temperature), tile_list(tiles)
        )
        ctx.save_for_backward(v, t, vmask8, tmask8, tw, vw)
        ctx.options = (pooling, direction, temperature, tiles)
        ctx.weight_dtypes = (text_weights.dtype, visual_weights.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        v, t, vmask8, tmask8, tw, vw = ctx.saved_tensors
        pooling, direction, temperature, tiles = ctx.options
        if tiles is not None and tiles.packed:
            tiles = None  # packing is forward-only; the backward recomputes on padded tiles
        need_dv, need_dt, need_dtw, need_dvw = ctx.needs_input_grad[:4]
        # Weights only matter for weighted pooling in a direction that is computed.
        need_dtw = need_dtw and pooling == "weighted" and direction in ("text", "both")
        need_dvw = need_dvw and pooling == "weighted" and direction in ("visual", "both")
        dv, dt, dtw, dvw = torch.ops.finealign.maxsim_backward(
            v,
            t,
            vmask8,
            tmask8,
            tw,
            vw,
            grad.float().contiguous(),
            pooling,
            direction,
            float(temperature),
            tile_list(tiles),
            [int(need_dv), int(need_dt), int(need_dtw), int(need_dvw)],
        )
        return (
            dv.to(v.dtype) if need_dv else None,
            dt.to(t.dtype) if need_dt else None,
            dtw.to(ctx.weight_dtypes[0]) if need_dtw else None,
            dvw.to(ctx.weight_dtypes[1]) if need_dvw else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _kernel_weights(pooling, tmask, vmask, text_weights, visual_weights) -> tuple[Tensor, Tensor]:
    """The per-token weights the kernels pool with: mean is weighted pooling with weights 1/n (and
    LSE ignores them), so those and any weights not given are 1/n on the real tokens."""
    if pooling != "weighted" or text_weights is None:
        text_weights = mean_weights(tmask)
    if pooling != "weighted" or visual_weights is None:
        visual_weights = mean_weights(vmask)
    return text_weights, visual_weights


def maxsim_triton(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    text_weights: Tensor | None = None,
    visual_weights: Tensor | None = None,
    tiles: Tiles | None = None,
) -> Tensor:
    """(Nv, Nt) fp32 scores, differentiable in v, t and (pooling='weighted') in the weights."""
    text_weights, visual_weights = _kernel_weights(pooling, tmask, vmask, text_weights, visual_weights)
    return _MaxSim.apply(v, t, text_weights, visual_weights, vmask, tmask, pooling, direction, temperature, tiles)


def maxsim_pairs_triton(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pairs: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    text_weights: Tensor | None = None,
    visual_weights: Tensor | None = None,
) -> Tensor:
    """(P,) fp32 scores of the listed (image, caption) pairs, one pair per program (forward only:
    the re-ranking stage of two_stage). Only the listed pairs' tokens are read."""
    text_weights, visual_weights = _kernel_weights(pooling, tmask, vmask, text_weights, visual_weights)
    return torch.ops.finealign.maxsim_forward(
        v,
        t,
        vmask.to(torch.int8).contiguous(),
        tmask.to(torch.int8).contiguous(),
        text_weights.float().contiguous(),
        visual_weights.float().contiguous(),
        pairs.to(torch.int32).contiguous(),
        pooling,
        direction,
        float(temperature),
        [],
    )


def launch_forward(v, t, vmask8, tmask8, tw, vw, pairs, pooling, direction, temperature, tiles: Tiles) -> Tensor:
    """finealign::maxsim_forward: (Nv, Nt) scores, or (P,) for int32 `pairs` (one pair per program)."""
    if pairs is None:
        out = torch.empty(v.shape[0], t.shape[0], dtype=torch.float32, device=v.device)
        _launch(
            _maxsim_fwd, v, t, vmask8, tmask8, tw, vw, (out, out), pooling, direction, temperature, tiles, PAIRS=False
        )
        return out
    out = torch.empty(pairs.shape[0], dtype=torch.float32, device=v.device)
    if pairs.shape[0]:
        one_pair = Tiles(1, 1, 32 if v.dtype == torch.float32 else 64, 4, 3)
        _launch(
            _maxsim_fwd,
            v,
            t,
            vmask8,
            tmask8,
            tw,
            vw,
            (out, pairs),
            pooling,
            direction,
            temperature,
            one_pair,
            PAIRS=True,
            n_pairs=pairs.shape[0],
        )
    return out


def launch_backward(v, t, vmask8, tmask8, tw, vw, grad, pooling, direction, temperature, tiles: Tiles, need):
    """finealign::maxsim_backward: fp32 gradients of v, t and the two token weights (empty where
    `need` is 0)."""
    need_dv, need_dt, need_dtw, need_dvw = map(bool, need)
    # fp32 accumulators for the atomic adds; empty placeholders for what is not needed.
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device) if need_dv else v.new_empty(0)
    dt = torch.zeros(t.shape, dtype=torch.float32, device=t.device) if need_dt else t.new_empty(0)
    dtw = torch.zeros_like(tw) if need_dtw else tw.new_empty(0)
    dvw = torch.zeros_like(vw) if need_dvw else vw.new_empty(0)
    _launch(
        _maxsim_bwd,
        v,
        t,
        vmask8,
        tmask8,
        tw,
        vw,
        (grad, dv, dt, dtw, dvw),
        pooling,
        direction,
        temperature,
        tiles,
        NEED_DV=need_dv,
        NEED_DT=need_dt,
        NEED_DTW=need_dtw,
        NEED_DVW=need_dvw,
    )
    return dv, dt, dtw, dvw

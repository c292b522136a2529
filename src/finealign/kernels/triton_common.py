"""Triton pieces shared by the fused MaxSim and Sinkhorn kernels: the token-similarity tile
(`sim_tile`, over `dot_rows`) and the matmul precision for an input dtype (`dot_precision`).

Both kernel modules import from here and never from each other. Import this module only after
deciding on TRITON_INTERPRET: Triton reads it when a kernel is decorated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dot_rows(
    a_base, b_base, a_in, b_in, s_ad, s_bd, D, RA: tl.constexpr, RB: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr
):
    """(RA, RB) fp32 dot products of the token rows at a_base / b_base (row pointers; masked
    rows read 0), accumulated over d in BK-wide steps."""
    acc = tl.zeros((RA, RB), dtype=tl.float32)
    for k in range(0, D, BK):
        kk = k + tl.arange(0, BK)
        kin = kk < D
        a = tl.load(a_base[:, None] + kk[None, :] * s_ad, mask=a_in[:, None] & kin[None, :], other=0.0)
        b = tl.load(b_base[:, None] + kk[None, :] * s_bd, mask=b_in[:, None] & kin[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    return acc


@triton.jit
def sim_tile(
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
    LVP: tl.constexpr,
    BT: tl.constexpr,
    LTP: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
):
    """fp32 similarities of BV images × BT captions as a (BV·LVP, BT·LTP) tile, plus token masks."""
    rows = tl.arange(0, BV * LVP)
    img = iv0 + rows // LVP
    rtok = rows % LVP
    row_in = (img < Nv) & (rtok < Lv)
    cols = tl.arange(0, BT * LTP)
    cap = it0 + cols // LTP
    ctok = cols % LTP
    col_in = (cap < Nt) & (ctok < Lt)
    a_base = v_ptr + img.to(tl.int64) * s_vn + rtok * s_vl
    b_base = t_ptr + cap.to(tl.int64) * s_tn + ctok * s_tl
    acc = dot_rows(a_base, b_base, row_in, col_in, s_vd, s_td, D, BV * LVP, BT * LTP, BK, PREC)
    vm = tl.load(vm_ptr + img * Lv + rtok, mask=row_in, other=0) != 0
    tm = tl.load(tm_ptr + cap * Lt + ctok, mask=col_in, other=0) != 0
    return acc, vm, tm


def dot_precision(dtype: torch.dtype) -> str:
    """The `input_precision` of tl.dot for inputs of `dtype`."""
    # fp32 inputs follow torch's own matmul setting (TF32 only if the user allowed it).
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"

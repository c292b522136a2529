"""TokenFlow scores with the differentiable torch solver, in blocks of pairs (the fallback and
the reference for the fused kernel)."""

from __future__ import annotations

import torch
from torch import Tensor


def _pair_log_marginals(vi, ti, vm, tm, la, lb, vp, tp, tau, acc):
    """(cv, ct, Lv) and (cv, ct, Lt) log masses: item marginals expanded, or per-pair importance."""
    cv, ct = vi.shape[0], ti.shape[0]
    if vp is None:
        return la.to(acc)[:, None, :].expand(cv, ct, -1), lb.to(acc)[None, :, :].expand(cv, ct, -1)
    region = torch.einsum("ikd,jd->ijk", vi.to(acc), tp.to(acc)) / tau
    word = torch.einsum("jld,id->ijl", ti.to(acc), vp.to(acc)) / tau
    region = torch.log_softmax(region.masked_fill(~vm[:, None, :], float("-inf")), -1)
    word = torch.log_softmax(word.masked_fill(~tm[None, :, :], float("-inf")), -1)
    return region, word


def sinkhorn_torch(
    v: Tensor, vmask: Tensor, t: Tensor, tmask: Tensor, log_visual: Tensor | None, log_text: Tensor | None,
    epsilon: float, iterations: int, rows: str, one_sided: bool, chunk_visual: int = 16, chunk_text: int = 64,
    visual_pooled: Tensor | None = None, text_pooled: Tensor | None = None, marginal_temperature: float = 0.1,
) -> Tensor:
    """(Nv, Nt) Σ flow·sim with cost = 1 − sim; the largest temporary is (cv·ct, Lv, Lt)."""
    # Imported here: finealign.aligners imports this package (for its backends) on import.
    from finealign.aligners.sinkhorn import log_sinkhorn

    acc = torch.promote_types(v.dtype, torch.float32)
    nv, lv, _ = v.shape
    nt, lt, _ = t.shape
    rows_out = []
    for i in range(0, nv, chunk_visual):
        row = []
        for j in range(0, nt, chunk_text):
            vi, tj = slice(i, i + chunk_visual), slice(j, j + chunk_text)
            cv, ct = v[vi].shape[0], t[tj].shape[0]
            sim = torch.einsum("ikd,jld->ijkl", v[vi].to(acc), t[tj].to(acc))
            valid = vmask[vi][:, None, :, None] & tmask[tj][None, :, None, :]
            sim = sim.masked_fill(~valid, 0.0).reshape(cv * ct, lv, lt)  # padding may hold anything
            mv = vmask[vi][:, None, :].expand(cv, ct, lv).reshape(cv * ct, lv)
            mt = tmask[tj][None, :, :].expand(cv, ct, lt).reshape(cv * ct, lt)
            la, lb = _pair_log_marginals(
                v[vi], t[tj], vmask[vi], tmask[tj],
                None if log_visual is None else log_visual[vi], None if log_text is None else log_text[tj],
                None if visual_pooled is None else visual_pooled[vi], None if text_pooled is None else text_pooled[tj],
                marginal_temperature, acc,
            )
            la, lb = la.reshape(cv * ct, lv), lb.reshape(cv * ct, lt)
            if rows == "visual":
                plan = log_sinkhorn(1.0 - sim, None if one_sided else la, lb, mv, mt, epsilon, iterations)
            else:
                plan = log_sinkhorn(
                    (1.0 - sim).transpose(1, 2), None if one_sided else lb, la, mt, mv, epsilon, iterations
                ).transpose(1, 2)
            row.append((plan * sim).sum((1, 2)).reshape(cv, ct))
        rows_out.append(torch.cat(row, 1))
    return torch.cat(rows_out, 0)

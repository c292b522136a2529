"""TokenFlow scores with the differentiable torch solver, in blocks of pairs (the fallback and
the reference for the fused kernel): every (image, caption) block, or a list of pairs."""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.kernels.sinkhorn import log_sinkhorn
from finealign.kernels.sinkhorn_options import SinkhornOptions


def _importance(vi: Tensor, ti: Tensor, vm: Tensor, tm: Tensor, vp: Tensor, tp: Tensor, tau: float, paired: bool):
    """Per-pair log importance masses: region·(caption global)/τ and word·(image global)/τ,
    log-softmaxed over real tokens. Cross block: (cv, ct, L); paired (item p with item p): (P, L)."""
    if paired:
        region, word = torch.einsum("pkd,pd->pk", vi, tp) / tau, torch.einsum("pld,pd->pl", ti, vp) / tau
    else:
        region = torch.einsum("ikd,jd->ijk", vi, tp) / tau
        word = torch.einsum("jld,id->ijl", ti, vp) / tau
        vm, tm = vm[:, None, :], tm[None, :, :]
    return torch.log_softmax(region.masked_fill(~vm, float("-inf")), -1), torch.log_softmax(
        word.masked_fill(~tm, float("-inf")), -1
    )


def _flow(sim: Tensor, mv: Tensor, mt: Tensor, la: Tensor, lb: Tensor, options: SinkhornOptions) -> Tensor:
    """(B,) Σ plan·sim for B problems: sim (B, Lv, Lt) with 0 on padding, masks and log masses (B, L)."""
    eps, iterations, one_sided = options.epsilon, options.iterations, options.one_sided
    if options.rows == "visual":
        plan = log_sinkhorn(1.0 - sim, None if one_sided else la, lb, mv, mt, eps, iterations)
    else:
        plan = log_sinkhorn((1.0 - sim).transpose(1, 2), None if one_sided else lb, la, mt, mv, eps, iterations)
        plan = plan.transpose(1, 2)
    return (plan * sim).sum((1, 2))


def sinkhorn_torch(
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
) -> Tensor:
    """(Nv, Nt) Σ flow·sim with cost = 1 − sim, solved as `options` says; the largest temporary is
    (cv·ct, Lv, Lt) for cv = options.chunk_visual images and ct = options.chunk_text captions."""
    chunk_visual, chunk_text = options.chunk_visual, options.chunk_text
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
            if visual_pooled is None:
                assert log_visual is not None and log_text is not None, "log masses or pooled vectors are needed"
                la, lb = (
                    log_visual[vi].to(acc)[:, None, :].expand(cv, ct, lv),
                    log_text[tj].to(acc)[None].expand(cv, ct, lt),
                )
            else:
                assert text_pooled is not None, "pooled vectors come in pairs (kernels/api.py checks)"
                la, lb = _importance(
                    v[vi].to(acc),
                    t[tj].to(acc),
                    vmask[vi],
                    tmask[tj],
                    visual_pooled[vi].to(acc),
                    text_pooled[tj].to(acc),
                    options.marginal_temperature,
                    paired=False,
                )
            flow = _flow(sim, mv, mt, la.reshape(cv * ct, lv), lb.reshape(cv * ct, lt), options)
            row.append(flow.reshape(cv, ct))
        rows_out.append(torch.cat(row, 1))
    return torch.cat(rows_out, 0)


def sinkhorn_pairs_torch(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pairs: Tensor,
    options: SinkhornOptions,
    *,
    log_visual: Tensor | None = None,
    log_text: Tensor | None = None,
    visual_pooled: Tensor | None = None,
    text_pooled: Tensor | None = None,
    chunk_pairs: int = 1024,
) -> Tensor:
    """(P,) Σ flow·sim of the listed (image, caption) pairs; the largest temporary is (chunk_pairs, Lv, Lt)."""
    acc = torch.promote_types(v.dtype, torch.float32)
    out = []
    for p in range(0, pairs.shape[0], chunk_pairs):
        iv, it = pairs[p : p + chunk_pairs, 0], pairs[p : p + chunk_pairs, 1]
        vi, ti, mv, mt = v[iv].to(acc), t[it].to(acc), vmask[iv], tmask[it]
        sim = torch.einsum("pkd,pld->pkl", vi, ti).masked_fill(~(mv[:, :, None] & mt[:, None, :]), 0.0)
        if visual_pooled is None:
            assert log_visual is not None and log_text is not None, "log masses or pooled vectors are needed"
            la, lb = log_visual[iv].to(acc), log_text[it].to(acc)
        else:
            assert text_pooled is not None, "pooled vectors come in pairs (kernels/api.py checks)"
            la, lb = _importance(
                vi,
                ti,
                mv,
                mt,
                visual_pooled[iv].to(acc),
                text_pooled[it].to(acc),
                options.marginal_temperature,
                paired=True,
            )
        out.append(_flow(sim, mv, mt, la, lb, options))
    return torch.cat(out) if out else v.new_zeros(0, dtype=acc)

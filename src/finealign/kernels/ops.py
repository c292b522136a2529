"""The fused kernels' launches as torch custom ops (`torch.ops.finealign.*`).

Why ops rather than plain Python calls: torch's FlopCounterMode (used by `finealign profile`)
sees custom ops and counts them with the formulas registered here — the token-pair matmul work,
2·Lv·Lt·d per (image, caption) pair scored, exactly what it counts for the torch paths' einsums —
where it cannot see inside a bare Triton launch. torch.compile can also trace through them.

This module imports without Triton (the op bodies import the kernel modules on first call), and
finealign.kernels imports it, so the formulas are registered before any FlopCounterMode starts:
a counter copies the registry when it is created.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from finealign.kernels.sinkhorn_options import SinkhornLaunch
from finealign.kernels.tiles import tiles_from_list


def token_pair_flops(v_shape, t_shape, pairs_shape=None) -> int:
    """Matmul FLOPs of the token-pair similarities: 2·Lv·Lt·d per (image, caption) pair scored."""
    (nv, lv, d), (nt, lt, _) = v_shape, t_shape
    n_pairs = nv * nt if pairs_shape is None else pairs_shape[0]
    return 2 * n_pairs * lv * lt * d


# -- MaxSim ---------------------------------------------------------------------------------------
@torch.library.custom_op("finealign::maxsim_forward", mutates_args=())
def maxsim_forward(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    tw: Tensor,
    vw: Tensor,
    pairs: Tensor | None,
    pooling: str,
    direction: str,
    temperature: float,
    tiles: list[int],
) -> Tensor:
    """(Nv, Nt) fp32 MaxSim scores, or (P,) for int32 `pairs`."""
    from finealign.kernels.maxsim_triton import launch_forward

    return launch_forward(
        v, t, vmask8, tmask8, tw, vw, pairs, pooling, direction, temperature, tiles_from_list(tiles, v, t)
    )


@maxsim_forward.register_fake
def _(v, t, vmask8, tmask8, tw, vw, pairs, pooling, direction, temperature, tiles):
    shape = (v.shape[0], t.shape[0]) if pairs is None else (pairs.shape[0],)
    return v.new_empty(shape, dtype=torch.float32)


@register_flop_formula(torch.ops.finealign.maxsim_forward)
def _(v, t, vmask8, tmask8, tw, vw, pairs, *args, out_shape=None, **kwargs) -> int:
    return token_pair_flops(v, t, pairs)


@torch.library.custom_op("finealign::maxsim_backward", mutates_args=())
def maxsim_backward(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    tw: Tensor,
    vw: Tensor,
    grad: Tensor,
    pooling: str,
    direction: str,
    temperature: float,
    tiles: list[int],
    need: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp32 gradients of v, t, text and visual weights; an empty tensor where `need` is 0."""
    from finealign.kernels.maxsim_triton import launch_backward

    return launch_backward(
        v, t, vmask8, tmask8, tw, vw, grad, pooling, direction, temperature, tiles_from_list(tiles, v, t), need
    )


@maxsim_backward.register_fake
def _(v, t, vmask8, tmask8, tw, vw, grad, pooling, direction, temperature, tiles, need):
    like = (v, t, tw, vw)
    return tuple(x.new_empty(x.shape if n else (0,), dtype=torch.float32) for x, n in zip(like, need))


@register_flop_formula(torch.ops.finealign.maxsim_backward)
def _(v, t, vmask8, tmask8, tw, vw, grad, pooling, direction, temperature, tiles, need, out_shape=None, **kwargs):
    # The similarities are recomputed, then one matmul per token gradient (dv = dS·t, dt = dSᵀ·v).
    return token_pair_flops(v, t) * (1 + int(need[0]) + int(need[1]))


# -- Sinkhorn flow --------------------------------------------------------------------------------
@torch.library.custom_op("finealign::sinkhorn_forward", mutates_args=())
def sinkhorn_forward(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    la: Tensor,
    lb: Tensor,
    vp: Tensor,
    tp: Tensor,
    pairs: Tensor | None,
    epsilon: float,
    marginal_temperature: float,
    iterations: int,
    text_first: bool,
    one_sided: bool,
    importance: bool,
    scaling: bool,
    absorb_every: int,
    captions_per_program: int,
    num_warps: int,
) -> Tensor:
    """(Nv, Nt) fp32 Σ flow·sim, or (P,) for int32 `pairs` (NaN where the scaling domain gave up).
    The scalars are a SinkhornLaunch's `op_args` (a custom op's schema takes no objects)."""
    from finealign.kernels.sinkhorn_triton import launch_sinkhorn

    launch = SinkhornLaunch.from_op_args(
        epsilon, marginal_temperature, iterations, text_first, one_sided, importance, scaling, absorb_every,
        captions_per_program, num_warps,
    )  # fmt: skip
    return launch_sinkhorn(v, t, vmask8, tmask8, la, lb, vp, tp, pairs, launch)[0]


@sinkhorn_forward.register_fake
def _(v, t, vmask8, tmask8, la, lb, vp, tp, pairs, *scalars):
    shape = (v.shape[0], t.shape[0]) if pairs is None else (pairs.shape[0],)
    return v.new_empty(shape, dtype=torch.float32)


def _sinkhorn_flops(v, t, pairs, scalars) -> int:
    flops = token_pair_flops(v, t, pairs)
    if SinkhornLaunch.from_op_args(*scalars).importance:  # region·(caption global) and word·(image global) per pair
        (nv, lv, d), (nt, lt, _) = v, t
        flops += 2 * (nv * nt if pairs is None else pairs[0]) * (lv + lt) * d
    return flops


@register_flop_formula(torch.ops.finealign.sinkhorn_forward)
def _(v, t, vmask8, tmask8, la, lb, vp, tp, pairs, *scalars, out_shape=None, **kwargs) -> int:
    return _sinkhorn_flops(v, t, pairs, scalars)


@torch.library.custom_op("finealign::sinkhorn_forward_saving", mutates_args=())
def sinkhorn_forward_saving(
    v: Tensor,
    t: Tensor,
    vmask8: Tensor,
    tmask8: Tensor,
    la: Tensor,
    lb: Tensor,
    vp: Tensor,
    tp: Tensor,
    epsilon: float,
    marginal_temperature: float,
    iterations: int,
    text_first: bool,
    one_sided: bool,
    importance: bool,
    scaling: bool,
    absorb_every: int,
    captions_per_program: int,
    num_warps: int,
) -> tuple[Tensor, Tensor]:
    """Training forward (log domain, full matrix): the scores and every iteration's potentials.
    The scalars are a SinkhornLaunch's `op_args`; the saving kernel never scales."""
    from finealign.kernels.sinkhorn_triton import launch_sinkhorn

    launch = SinkhornLaunch.from_op_args(
        epsilon, marginal_temperature, iterations, text_first, one_sided, importance, scaling, absorb_every,
        captions_per_program, num_warps,
    )  # fmt: skip
    return launch_sinkhorn(v, t, vmask8, tmask8, la, lb, vp, tp, None, launch, save=True)


@sinkhorn_forward_saving.register_fake
def _(v, t, vmask8, tmask8, la, lb, vp, tp, *scalars):
    from finealign.kernels.tiles import next_pow2

    launch = SinkhornLaunch.from_op_args(*scalars)
    lvp, ltp = max(16, next_pow2(v.shape[1])), next_pow2(t.shape[1])
    bt = max(launch.captions_per_program or 1, -(-16 // ltp))
    programs = v.shape[0] * -(-t.shape[0] // bt)
    saved = 0 if launch.one_sided else programs * launch.iterations * (lvp * bt + bt * ltp)
    return v.new_empty((v.shape[0], t.shape[0]), dtype=torch.float32), v.new_empty((saved,), dtype=torch.float32)


@register_flop_formula(torch.ops.finealign.sinkhorn_forward_saving)
def _(v, t, vmask8, tmask8, la, lb, vp, tp, *scalars, out_shape=None, **kwargs) -> int:
    return _sinkhorn_flops(v, t, None, scalars)


@torch.library.custom_op("finealign::sinkhorn_backward", mutates_args=())
def sinkhorn_backward(
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
    epsilon: float,
    marginal_temperature: float,
    iterations: int,
    text_first: bool,
    one_sided: bool,
    importance: bool,
    scaling: bool,
    absorb_every: int,
    captions_per_program: int,
    num_warps: int,
    need: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fp32 gradients of v, t and the marginals' inputs (la/lb, or vp/tp for importance). The
    scalars are the forward's SinkhornLaunch `op_args`."""
    from finealign.kernels.sinkhorn_triton import launch_sinkhorn_backward

    launch = SinkhornLaunch.from_op_args(
        epsilon, marginal_temperature, iterations, text_first, one_sided, importance, scaling, absorb_every,
        captions_per_program, num_warps,
    )  # fmt: skip
    return launch_sinkhorn_backward(v, t, vmask8, tmask8, la, lb, vp, tp, grad, saved, launch, need)


@sinkhorn_backward.register_fake
def _(v, t, vmask8, tmask8, la, lb, vp, tp, grad, saved, *scalars_and_need):
    *scalars, need = scalars_and_need
    marginals = (vp, tp) if SinkhornLaunch.from_op_args(*scalars).importance else (la, lb)
    like = (v, t, *marginals)
    wanted = (need[0], need[1], need[2], need[2])
    return tuple(x.new_empty(x.shape if n else (0,), dtype=torch.float32) for x, n in zip(like, wanted))


@register_flop_formula(torch.ops.finealign.sinkhorn_backward)
def _(v, t, vmask8, tmask8, la, lb, vp, tp, grad, saved, *scalars_and_need, out_shape=None, **kwargs) -> int:
    *scalars, need = scalars_and_need
    # Similarities recomputed (and importance logits' dot products), then one matmul per token gradient.
    return _sinkhorn_flops(v, t, None, scalars) + token_pair_flops(v, t) * (int(need[0]) + int(need[1]))

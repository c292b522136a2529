"""Argument checks shared by the kernel entry points (wrong shapes fail loudly, with names)."""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.checks import check_choice, check_number, check_positive_int
from finealign.errors import ShapeError
from finealign.kernels.sinkhorn_options import SINKHORN_DOMAINS

POOLINGS = ("mean", "weighted", "lse")
DIRECTIONS = ("text", "visual", "both")


def check_tokens(v: Tensor, vmask: Tensor, t: Tensor, tmask: Tensor) -> None:
    """v (Nv, Lv, d) with vmask (Nv, Lv) bool; t (Nt, Lt, d) with tmask (Nt, Lt) bool."""
    for name, x, m in (("visual", v, vmask), ("text", t, tmask)):
        if x.dim() != 3:
            raise ShapeError(f"{name} tokens must be (N, L, d), got shape {tuple(x.shape)}")
        if m.dtype != torch.bool or m.shape != x.shape[:2]:
            raise ShapeError(f"{name} mask must be bool (N, L) = {tuple(x.shape[:2])}, got {m.dtype} {tuple(m.shape)}")
        if m.device != x.device:
            raise ShapeError(f"{name} mask is on {m.device} but its tokens are on {x.device}")
    if v.shape[2] != t.shape[2]:
        raise ShapeError(f"visual and text token dims differ: {v.shape[2]} vs {t.shape[2]}")
    if v.dtype != t.dtype or v.device != t.device:
        raise ShapeError(f"visual and text tokens differ in dtype/device: {v.dtype}/{v.device} vs {t.dtype}/{t.device}")


def check_pooling(pooling: str, direction: str, temperature: float) -> None:
    check_choice("pooling", pooling, POOLINGS)
    check_choice("direction", direction, DIRECTIONS)
    check_number("temperature", temperature, low=0, strict=True)


def check_token_weights(weights: Tensor | None, mask: Tensor, name: str, needed: bool) -> None:
    """Per-token pooling weights (N, L) for pooling='weighted' (0 is expected on padding)."""
    if not needed:
        return
    if weights is None:
        raise ShapeError(f"pooling='weighted' with this direction needs {name}_weights (N, L), got None")
    if weights.shape != mask.shape or not weights.is_floating_point():
        raise ShapeError(
            f"{name}_weights must be floating (N, L) = {tuple(mask.shape)}, got {weights.dtype} {tuple(weights.shape)}"
        )


def check_sinkhorn_kernel_options(domain: str, absorb_every: int = 10) -> None:
    """The fused kernel's domain and absorb period, for a config that builds SinkhornOptions later
    (the tokenflow aligner checks them when its own Config is built)."""
    check_choice("domain", domain, SINKHORN_DOMAINS)
    check_positive_int("absorb_every", absorb_every)


def check_marginal(log_m: Tensor | None, mask: Tensor, name: str) -> None:
    if log_m is not None and log_m.shape != mask.shape:
        raise ShapeError(f"log_{name} must be (N, L) = {tuple(mask.shape)}, got {tuple(log_m.shape)}")


def check_pair_indices(pairs, n_visual: int, n_text: int) -> None:
    """Raise ShapeError unless `pairs` is a (P, 2) integer tensor of in-range (visual, text) indices."""
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2:
        shape = tuple(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs).__name__
        raise ShapeError(f"pairs must be a (P, 2) tensor of (visual index, text index), got {shape}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool or pairs.dtype.is_complex:
        raise ShapeError(f"pairs must hold integer indices, got {pairs.dtype}")
    if len(pairs) == 0:
        return
    for column, name, size in ((0, "visual", n_visual), (1, "text", n_text)):
        low, high = int(pairs[:, column].min()), int(pairs[:, column].max())
        if low < 0 or high >= size:
            raise ShapeError(f"pairs has {name} index {low if low < 0 else high} outside [0, {size})")

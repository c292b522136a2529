"""Argument checks shared by the kernel entry points (wrong shapes fail loudly, with names)."""

from __future__ import annotations

import torch
from torch import Tensor

from finealign.errors import ConfigError, ShapeError

POOLINGS = ("mean", "weighted", "lse")
DIRECTIONS = ("text", "visual", "both")


def check_tokens(v: Tensor, vmask: Tensor, t: Tensor, tmask: Tensor) -> None:
    """v (Nv, Lv, d) with vmask (Nv, Lv) bool; t (Nt, Lt, d) with tmask (Nt, Lt) bool."""
    for name, x, m in (("visual", v, vmask), ("text", t, tmask)):
        if x.dim() != 3:
            raise ShapeError(f"{name} tokens must be (N, L, d), got shape {tuple(x.shape)}")
        if m.dtype != torch.bool or m.shape != x.shape[:2]:
            raise ShapeError(
                f"{name} mask must be bool (N, L) = {tuple(x.shape[:2])}, got {m.dtype} {tuple(m.shape)}"
            )
        if m.device != x.device:
            raise ShapeError(f"{name} mask is on {m.device} but its tokens are on {x.device}")
    if v.shape[2] != t.shape[2]:
        raise ShapeError(f"visual and text token dims differ: {v.shape[2]} vs {t.shape[2]}")
    if v.dtype != t.dtype or v.device != t.device:
        raise ShapeError(f"visual and text tokens differ in dtype/device: {v.dtype}/{v.device} vs {t.dtype}/{t.device}")


def check_pooling(pooling: str, direction: str, temperature: float) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")


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


def check_marginal(log_m: Tensor | None, mask: Tensor, name: str) -> None:
    if log_m is not None and log_m.shape != mask.shape:
        raise ShapeError(f"log_{name} must be (N, L) = {tuple(mask.shape)}, got {tuple(log_m.shape)}")

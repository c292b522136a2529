"""Slow per-pair references for the kernels: Python loops over real tokens in float64."""

from __future__ import annotations

import math

import torch


def pool(values: list[float], weights: list[float] | None, pooling: str, temperature: float) -> float:
    if pooling == "lse":
        top = max(values)
        return temperature * math.log(sum(math.exp((x - top) / temperature) for x in values)) + top
    if pooling == "mean":
        return sum(values) / len(values)
    return sum(w * x for w, x in zip(weights, values))


def maxsim_pair(v, t, pooling, direction, temperature, tw=None, vw=None) -> float:
    """v (n, d), t (m, d) real tokens only; tw (m,), vw (n,) weights of those tokens."""
    parts = []
    if direction in ("text", "both"):
        parts.append(pool([max(float(w @ r) for r in v) for w in t], tw, pooling, temperature))
    if direction in ("visual", "both"):
        parts.append(pool([max(float(r @ w) for w in t) for r in v], vw, pooling, temperature))
    return sum(parts) / len(parts)


def maxsim_matrix(v, vmask, t, tmask, pooling, direction, temperature, tw=None, vw=None) -> torch.Tensor:
    out = torch.empty(v.shape[0], t.shape[0], dtype=torch.float64)
    for i in range(v.shape[0]):
        for j in range(t.shape[0]):
            out[i, j] = maxsim_pair(
                v[i][vmask[i]].double(),
                t[j][tmask[j]].double(),
                pooling,
                direction,
                temperature,
                None if tw is None else tw[j][tmask[j]].tolist(),
                None if vw is None else vw[i][vmask[i]].tolist(),
            )
    return out

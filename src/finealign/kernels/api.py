"""Public entry points: validate, pick the backend, call the Triton kernel or the torch path."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from finealign.errors import ConfigError, ShapeError
from finealign.kernels.checks import (
    check_marginal,
    check_pair_indices,
    check_pooling,
    check_token_weights,
    check_tokens,
)
from finealign.kernels.dispatch import interpreting, use_triton
from finealign.kernels.maxsim_torch import maxsim_pairs_torch, maxsim_torch
from finealign.kernels.sinkhorn_options import SinkhornOptions
from finealign.kernels.sinkhorn_torch import sinkhorn_pairs_torch, sinkhorn_torch
from finealign.kernels.tiles import Tiles


def maxsim_scores(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    pooling: str = "mean",
    direction: str = "text",
    temperature: float = 0.1,
    *,
    text_weights: Tensor | None = None,
    visual_weights: Tensor | None = None,
    backend: str = "auto",
    chunk_visual: int = 64,
    chunk_text: int = 256,
    tiles: Tiles | None = None,
    pairs: Tensor | None = None,
) -> Tensor:
    """(Nv, Nt) token-wise max scores of every (image, caption) pair, or (P,) of the listed ones.

    v (Nv, Lv, d) + vmask (Nv, Lv) bool, t (Nt, Lt, d) + tmask (Nt, Lt) bool (True = real).
    direction "text": each real word's best real region; "visual": each region's best word;
    "both": ½ (text + visual). pooling over the real tokens: "mean", "weighted" (Σ weight·best
    with the given per-token weights, e.g. DRL WTI's softmax), or "lse" (τ·logsumexp(best/τ)).
    Returns fp32 (fp64 for fp64 inputs); differentiable in v, t and the weights.
    chunk_* bound the torch path's (cv, ct, Lv, Lt) temporary; `tiles` overrides Triton's tiles.
    pairs: (P, 2) (image index, caption index) rows → entry p is the matrix's [pairs[p, 0], pairs[p, 1]]
    (two_stage's re-ranking). The Triton pair kernel is forward-only: with autograd on, "auto"
    takes the torch path.
    """
    check_tokens(v, vmask, t, tmask)
    check_pooling(pooling, direction, temperature)
    weighted = pooling == "weighted"
    check_token_weights(text_weights, tmask, "text", weighted and direction in ("text", "both"))
    check_token_weights(visual_weights, vmask, "visual", weighted and direction in ("visual", "both"))
    if pairs is not None:
        check_pair_indices(pairs, v.shape[0], t.shape[0])
        pairs = pairs.to(v.device)
        if _forward_only_kernel(backend, v, (v, t, text_weights, visual_weights)):
            from finealign.kernels.maxsim_triton import maxsim_pairs_triton

            v, t = _interpreter_safe(v), _interpreter_safe(t)
            return maxsim_pairs_triton(
                v, vmask, t, tmask, pairs, pooling, direction, temperature, text_weights, visual_weights
            )
        return maxsim_pairs_torch(
            v, vmask, t, tmask, pairs, pooling, direction, temperature, text_weights, visual_weights
        )
    if use_triton(backend, v):
        from finealign.kernels.maxsim_triton import maxsim_triton  # imports triton: only when used

        v, t = _interpreter_safe(v), _interpreter_safe(t)
        return maxsim_triton(v, vmask, t, tmask, pooling, direction, temperature, text_weights, visual_weights, tiles)
    return maxsim_torch(
        v, vmask, t, tmask, pooling, direction, temperature, text_weights, visual_weights, chunk_visual, chunk_text
    )


def _forward_only_kernel(backend: str, like: Tensor, inputs) -> bool:
    """Whether a forward-only kernel scores these inputs: not when autograd needs a graph through
    them ("auto" then takes torch; "triton" is an error rather than a silent missing gradient)."""
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if backend == "triton" and needs_grad:
        raise ConfigError("this fused kernel is forward-only; use backend='torch' (or 'auto') to train through it")
    return not needs_grad and use_triton(backend, like)


def _interpreter_safe(x: Tensor) -> Tensor:
    """Triton's CPU interpreter mis-computes tl.dot on bf16 (seen with triton 3.8); bf16 products
    are exact in fp32, so upcasting there gives what the GPU's bf16 MMA with fp32 accumulation gives."""
    return x.float() if interpreting() and x.dtype == torch.bfloat16 else x


def uniform_log_marginal(mask: Tensor) -> Tensor:
    """(N, L) log(1/n) on each item's n real tokens, -inf on padding."""
    m = mask.to(torch.float32)
    return torch.log(m / m.sum(1, keepdim=True).clamp_min(1.0))


def sinkhorn_flow_scores(
    v: Tensor,
    vmask: Tensor,
    t: Tensor,
    tmask: Tensor,
    *,
    log_visual: Tensor | None = None,
    log_text: Tensor | None = None,
    visual_pooled: Tensor | None = None,
    text_pooled: Tensor | None = None,
    pairs: Tensor | None = None,
    options: SinkhornOptions | None = None,
    **option_values: Any,
) -> Tensor:
    """(Nv, Nt) TokenFlow scores Σ_rw flow_rw · sim_rw, flow the entropic OT plan for cost 1 − sim,
    or (P,) scores of the listed (image, caption) `pairs` (two_stage's re-ranking).

    Marginals, one of: log_visual (Nv, Lv) / log_text (Nt, Lt) log token masses (each sums to 1
    over real tokens; padding is ignored; None = uniform over real tokens); or visual_pooled (Nv, d)
    and text_pooled (Nt, d) global vectors, for TokenFlow's per-pair "importance" marginals:
    softmax over real regions of region·text_pooled/τ and over real words of word·visual_pooled/τ
    (τ = options.marginal_temperature), computed on chip. How to solve: `options` (SinkhornOptions),
    or its fields as keywords (`epsilon=0.05, iterations=50`), which override `options`. With
    autograd on, the Triton kernel saves every iteration's potentials and a backward kernel reverses
    them (log domain; `domain` then does not apply); for `pairs` it is forward-only, and "auto"
    takes the torch solver. Same iterates in either domain, so the same scores; the torch solver is
    always log-domain.
    """
    unknown = sorted(set(option_values) - {f.name for f in dataclasses.fields(SinkhornOptions)})
    if unknown:
        raise ConfigError(f"sinkhorn_flow_scores got unknown option(s) {unknown}; see SinkhornOptions")
    opts = dataclasses.replace(options or SinkhornOptions(), **option_values)
    check_tokens(v, vmask, t, tmask)
    check_marginal(log_visual, vmask, "visual")
    check_marginal(log_text, tmask, "text")
    if (visual_pooled is None) != (text_pooled is None):
        raise ShapeError("importance marginals need both visual_pooled and text_pooled")
    if visual_pooled is not None and text_pooled is not None:  # both or neither (checked above)
        if log_visual is not None or log_text is not None:
            raise ConfigError("give either log marginals or pooled vectors (importance), not both")
        for name, pooled, x in (("visual", visual_pooled, v), ("text", text_pooled, t)):
            if pooled.shape != (x.shape[0], x.shape[2]):
                raise ShapeError(
                    f"{name}_pooled must be (N, d) = {(x.shape[0], x.shape[2])}, got {tuple(pooled.shape)}"
                )
    if visual_pooled is None:
        log_visual = uniform_log_marginal(vmask) if log_visual is None else log_visual
        log_text = uniform_log_marginal(tmask) if log_text is None else log_text
    marginals: dict[str, Any] = dict(
        log_visual=log_visual, log_text=log_text, visual_pooled=visual_pooled, text_pooled=text_pooled
    )
    if pairs is not None:
        check_pair_indices(pairs, v.shape[0], t.shape[0])
        pairs = pairs.to(v.device)
    # The full-matrix kernel has a backward (log domain); the pair kernel is forward-only.
    inputs = (v, t, log_visual, log_text, visual_pooled, text_pooled)
    if use_triton(opts.backend, v) if pairs is None else _forward_only_kernel(opts.backend, v, inputs):
        from finealign.kernels.sinkhorn_triton import sinkhorn_triton

        v, t = _interpreter_safe(v), _interpreter_safe(t)
        return sinkhorn_triton(v, vmask, t, tmask, opts, pairs=pairs, **marginals)
    if pairs is not None:
        return sinkhorn_pairs_torch(v, vmask, t, tmask, pairs, opts, **marginals)
    return sinkhorn_torch(v, vmask, t, tmask, opts, **marginals)

"""Input checks shared by every aligner: wrong shapes, dtypes, NaN and empty items fail loudly."""

from __future__ import annotations

import torch

from finealign.errors import ShapeError
from finealign.tokens import TokenBatch


def check_batch(batch: TokenBatch, name: str, *, need_pooled: bool = False) -> None:
    """Raise ShapeError naming `name` if `batch` breaks the aligner contract.

    Contract: tokens (N, L, d) floating; mask (N, L) bool; pooled (N, d) if given; no NaN/inf in
    real tokens; every item has at least one real token (an all-padding item has no defined
    score, so it is an error rather than a silent 0 or NaN).
    """
    if not isinstance(batch, TokenBatch):
        raise ShapeError(f"{name}: expected a TokenBatch, got {type(batch).__name__}")
    t, m = batch.tokens, batch.mask
    for field, value in (("tokens", t), ("mask", m), ("pooled", batch.pooled)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise ShapeError(
                f"{name}.{field} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__} "
                "(convert with torch.from_numpy / torch.as_tensor)"
            )
    if t.dim() != 3:
        raise ShapeError(f"{name}.tokens must be (N, L, d), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ShapeError(f"{name}.tokens must be floating point, got {t.dtype}")
    if m.dtype != torch.bool:
        raise ShapeError(f"{name}.mask must be a bool tensor (True = real token), got {m.dtype}")
    if m.shape != t.shape[:2]:
        raise ShapeError(f"{name}.mask must be (N, L) = {tuple(t.shape[:2])} to match the tokens, got {tuple(m.shape)}")
    if m.device != t.device:
        raise ShapeError(f"{name}.mask is on {m.device} but the tokens are on {t.device}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"{name} is empty: tokens have shape {tuple(t.shape)}")
    if batch.pooled is not None and batch.pooled.shape != (t.shape[0], t.shape[2]):
        raise ShapeError(f"{name}.pooled must be (N, d) = {(t.shape[0], t.shape[2])}, got {tuple(batch.pooled.shape)}")
    if batch.pooled is None and need_pooled:
        raise ShapeError(f"{name}.pooled is required by this aligner but is None")
    with torch.no_grad():
        empty = ~m.any(dim=1)
        # (N, L): real token holding NaN/inf. A NaN or inf anywhere in a token makes its fp32 sum
        # non-finite, so this needs (N, L) temporaries instead of an (N, L, d) bool mask.
        bad = ~torch.isfinite(t.sum(-1, dtype=torch.float32)) & m
        flags = [empty.any(), bad.any()]
        if batch.pooled is not None:
            flags.append(~torch.isfinite(batch.pooled).all())
        # One host-device sync for all value checks; details are computed only on failure.
        if not bool(torch.stack(flags).any()):
            return
    if bool(empty.any()):
        rows = empty.nonzero().flatten()[:5].tolist()
        raise ShapeError(
            f"{name}: item(s) {rows} have no real token (mask row all False); drop them or unmask at least one token"
        )
    if bool(bad.any()):
        item = int(bad.any(-1).nonzero()[0])
        raise ShapeError(f"{name}.tokens holds NaN or inf (first at item {item})")
    raise ShapeError(f"{name}.pooled holds NaN or inf")


def check_pair(visual: TokenBatch, text: TokenBatch, *, need_pooled: bool = False) -> None:
    check_batch(visual, "visual", need_pooled=need_pooled)
    check_batch(text, "text", need_pooled=need_pooled)
    check_match(visual, text)


def check_queries(visual: TokenBatch, text: TokenBatch, *, need_pooled: bool = False) -> None:
    """check_pair for image queries against a gallery whose captions `text` were checked when it
    was prepared: only the queries' own values are read again."""
    check_batch(visual, "visual", need_pooled=need_pooled)
    check_match(visual, text)


def check_match(visual: TokenBatch, text: TokenBatch) -> None:
    """ShapeError unless two checked batches share their token dim, device and dtype."""
    if visual.dim != text.dim:
        raise ShapeError(
            f"visual and text token dims differ: {visual.dim} vs {text.dim}; "
            "project both to the joint embedding dimension first"
        )
    if visual.tokens.device != text.tokens.device:
        raise ShapeError(f"visual is on {visual.tokens.device} but text is on {text.tokens.device}")
    if visual.tokens.dtype != text.tokens.dtype:
        raise ShapeError(
            f"visual tokens are {visual.tokens.dtype} but text tokens are {text.tokens.dtype}; cast both to one "
            "dtype (or run under torch.autocast)"
        )

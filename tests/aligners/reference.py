"""Slow, obviously-correct per-pair references for the aligners: plain Python loops over items
and real tokens only (padding is dropped before anything is computed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finealign.tokens import TokenBatch


def real_tokens(batch: TokenBatch, i: int, normalize: bool = True) -> torch.Tensor:
    t = batch.tokens[i][batch.mask[i]].double()
    return F.normalize(t, dim=-1) if normalize else t


def pairwise(visual: TokenBatch, text: TokenBatch, pair_score) -> torch.Tensor:
    """(Nv, Nt) matrix of `pair_score(v_tokens, t_tokens, i, j)` over every pair, one at a time."""
    out = torch.empty(len(visual), len(text), dtype=torch.float64)
    for i in range(len(visual)):
        for j in range(len(text)):
            out[i, j] = pair_score(i, j)
    return out


def mean_max_pair(v: torch.Tensor, t: torch.Tensor, direction: str = "text") -> float:
    """Loop form: for each word, the best region; mean over words (and the reverse for 'both')."""
    word_scores = [max(float(w @ r) for r in v) for w in t]
    score = sum(word_scores) / len(word_scores)
    if direction == "both":
        region_scores = [max(float(r @ w) for w in t) for r in v]
        score = 0.5 * (score + sum(region_scores) / len(region_scores))
    return score

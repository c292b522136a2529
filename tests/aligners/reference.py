"""Slow, obviously-correct per-pair references for the aligners: plain Python loops over items
and real tokens only (padding is dropped before anything is computed)."""

from __future__ import annotations

import math

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


def pool_scores(scores: list[float], pooling: str, temperature: float) -> float:
    """mean, or τ · log Σ exp(s / τ) written out term by term (shifted by the max for overflow)."""
    if pooling == "mean":
        return sum(scores) / len(scores)
    top = max(scores)
    return top + temperature * math.log(sum(math.exp((s - top) / temperature) for s in scores))


def global_pair(v_vec: torch.Tensor, t_vec: torch.Tensor) -> float:
    """Cosine of two global vectors."""
    return float(v_vec @ t_vec) / (float(v_vec.norm()) * float(t_vec.norm()))


def token_mean(batch: TokenBatch, i: int) -> torch.Tensor:
    """Plain average of item i's real (raw, unnormalised) tokens."""
    real = real_tokens(batch, i, normalize=False)
    return sum(real) / len(real)


def hard_pair(v, t, pooling: str = "lse", temperature: float = 0.1, direction: str = "text") -> float:
    """Each word keeps its best region (and/or each region its best word); pooled."""
    parts = []
    if direction in ("text", "both"):
        parts.append(pool_scores([max(float(w @ r) for r in v) for w in t], pooling, temperature))
    if direction in ("visual", "both"):
        parts.append(pool_scores([max(float(r @ w) for w in t) for r in v], pooling, temperature))
    return sum(parts) / len(parts)


def softmax_list(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    return [e / sum(exps) for e in exps]


def weighted_mean_max_pair(v, t, w_text, w_visual, direction: str = "both") -> float:
    """w_text / w_visual: (weight vector, bias) of the Linear(d, 1) scoring each token (or None)."""
    parts = []
    if direction in ("text", "both"):
        weights = softmax_list([float(w @ w_text[0]) + float(w_text[1]) for w in t])
        parts.append(sum(a * max(float(w @ r) for r in v) for a, w in zip(weights, t)))
    if direction in ("visual", "both"):
        weights = softmax_list([float(r @ w_visual[0]) + float(w_visual[1]) for r in v])
        parts.append(sum(b * max(float(r @ w) for w in t) for b, r in zip(weights, v)))
    return sum(parts) / len(parts)


def scan_attention(v, t, lambda_softmax: float = 9.0, scan_norm: bool = True) -> list[list[float]]:
    """attention[w][r]: for each word, softmax over regions of λ · (normalised) similarity."""
    sim = [[float(r @ w) for w in t] for r in v]  # sim[r][w]
    if scan_norm:
        clipped = [[x if x > 0 else 0.1 * x for x in row] for row in sim]
        sim = []
        for row in clipped:  # l2-normalise each region's row over the words
            norm = max(math.sqrt(sum(x * x for x in row)), 1e-12)
            sim.append([x / norm for x in row])
    return [softmax_list([lambda_softmax * sim[r][w] for r in range(len(v))]) for w in range(len(t))]


def cross_attention_pair(v, t, lambda_softmax=9.0, scan_norm=True, pooling="mean", temperature=0.1) -> float:
    """Attended region vector per word, cosine with the word, pooled over words."""
    attention = scan_attention(v, t, lambda_softmax, scan_norm)
    relevance = []
    for w, alphas in zip(t, attention):
        attended = sum(a * r for a, r in zip(alphas, v))
        relevance.append(float(F.cosine_similarity(w, attended, dim=0)))
    return pool_scores(relevance, pooling, temperature)


def best_with_zero_slots(scores: list[float], padded: bool) -> float:
    """A token's best similarity over the other item; DRL's padded slots add a candidate 0."""
    return max([*scores, 0.0]) if padded else max(scores)


def zero_padded_mean_max_pair(v, t, direction="both", pad_visual=None, pad_text=None, word_pooling="mean") -> float:
    """mean_max as DRL computes it: an item with fewer real tokens than its fixed length has
    padded slots, whose similarity 0 joins every max taken over that item."""
    visual_padded = pad_visual is not None and len(v) < pad_visual
    text_padded = pad_text is not None and len(t) < pad_text
    word_scores = [best_with_zero_slots([float(w @ r) for r in v], visual_padded) for w in t]
    score = sum(word_scores) / (len(word_scores) if word_pooling == "mean" else 1)
    if direction == "both":
        region_scores = [best_with_zero_slots([float(r @ w) for w in t], text_padded) for r in v]
        score = 0.5 * (score + sum(region_scores) / len(region_scores))
    return score


def zero_padded_weighted_pair(v, t, v_head_in, t_head_in, w_text, w_visual, direction, pad_visual, pad_text) -> float:
    """weighted_mean_max with DRL's zero padding; the weights come from `*_head_in` (the tokens the
    heads read: raw or the same unit vectors), the similarities from the unit vectors v, t.
    w_text / w_visual: (weight vector, bias) of each side's Linear(d, 1), or None."""
    visual_padded = pad_visual is not None and len(v) < pad_visual
    text_padded = pad_text is not None and len(t) < pad_text
    parts = []
    if direction in ("text", "both"):
        weights = softmax_list([float(x @ w_text[0]) + float(w_text[1]) for x in t_head_in])
        best = [best_with_zero_slots([float(w @ r) for r in v], visual_padded) for w in t]
        parts.append(sum(a * b for a, b in zip(weights, best)))
    if direction in ("visual", "both"):
        weights = softmax_list([float(x @ w_visual[0]) + float(w_visual[1]) for x in v_head_in])
        best = [best_with_zero_slots([float(r @ w) for w in t], text_padded) for r in v]
        parts.append(sum(a * b for a, b in zip(weights, best)))
    return sum(parts) / len(parts)

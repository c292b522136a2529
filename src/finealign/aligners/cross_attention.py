"""Stacked cross attention, text → image (SCAN t-i): each word attends over the regions.

For one (image, caption) pair with token similarities s(r, w) (cosines when `normalize` is on):
  scan_norm:  ŝ(r, w) = leaky_relu(s(r, w), 0.1) / ‖leaky_relu(s(r, ·), 0.1)‖₂ over real words
              (SCAN's "clipped l2norm"); without scan_norm, ŝ = s.
  attention:  α(r | w) = softmax over real regions r of λ · ŝ(r, w)           (λ = lambda_softmax)
  attended:   a_w = Σ_r α(r | w) · region_r
  relevance:  R(w) = cos(word_w, a_w)                    (always a cosine, whatever `normalize`)
  score:      mean over real words of R(w), or τ · log Σ_w exp(R(w) / τ) with pooling="lse".

Memory: a_w is never materialised per pair. word·a_w = Σ_r α s(r, w) and
‖a_w‖² = αᵀ G α with G the (Lv, Lv) Gram matrix of the regions, so a block needs only
(nv, nt, Lv, Lt) temporaries, like every other aligner. Softmax, norms and pooling run in fp32
for half-precision inputs.

Speed (`score_block`): the captions' real words are packed and grouped by length, so one product of
every region with every real word (the real-token floor) gives all similarities, and each group of
equal-length captions is a regular (nv, Lv, captions, L) view with no padding word — the
normalisation over words broadcasts, nothing is gathered. The softmax skips its max shift when
scan_norm bounds the logits (|λ·ŝ| ≤ λ ≤ 80 cannot overflow), and the unnormalised attention
e = exp(λ·ŝ) gives R(w) directly: the softmax's denominator cancels out of the cosine (it is kept
to apply the same clamps). `padded_block_scores` is the padded per-pair path it replaced (the
reference in tests and benchmarks/cross_attention_cpu.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from finealign.aligners.base import Aligner, AlignerConfig, TokenAlignment, token_similarities
from finealign.aligners.pooling import accumulation_dtype, check_pooling, masked_softmax, pool_masked, segment_pool
from finealign.errors import ConfigError
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch

LEAKY_SLOPE = 0.1  # SCAN clips negative similarities with leaky_relu(0.1) before normalising
NORM_EPS = 1e-12
#: with scan_norm every logit is within ±λ; up to this λ, exp cannot overflow fp32 (no max shift)
UNSHIFTED_LAMBDA = 80.0
LOG2_E = math.log2(math.e)


@dataclass
class CrossAttentionConfig(AlignerConfig):
    lambda_softmax: float = 9.0  # λ, inverse temperature of the attention softmax over regions
    scan_norm: bool = True  # leaky-relu + l2-normalise similarities over words before the softmax
    pooling: str = "mean"  # "mean" | "lse" over words
    temperature: float = 0.1  # τ of the LogSumExp pooling: τ · logsumexp(R / τ)
    # smaller blocks than the token-wise aligners: a block holds (nv, nt, Lv, Lt) attention tensors
    chunk_visual: int = 16
    chunk_text: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        lam = self.lambda_softmax
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ConfigError(f"lambda_softmax must be a positive number, got {lam!r}")
        if not isinstance(self.scan_norm, bool):
            raise ConfigError(f"scan_norm must be True or False, got {self.scan_norm!r}")
        check_pooling(self.pooling, self.temperature)


@ALIGNERS.register("cross_attention")
class CrossAttentionAligner(Aligner[CrossAttentionConfig]):
    """SCAN text→image cross attention: each word attends over regions, cos(word, attended)."""

    Config = CrossAttentionConfig

    def attention(self, sim: Tensor, region_real: Tensor, word_real: Tensor) -> Tensor:
        """α(r | w) (..., Lv, Lt) from similarities (..., Lv, Lt); zero on padded regions.

        region_real / word_real: masks broadcastable to (..., Lv, 1) / (..., 1, Lt).
        """
        logits = sim
        if self.config.scan_norm:
            clipped = F.leaky_relu(sim, LEAKY_SLOPE)
            clipped = torch.where(word_real, clipped, torch.zeros((), dtype=sim.dtype, device=sim.device))
            logits = F.normalize(clipped, dim=-1, eps=NORM_EPS)  # over words, per region
        return masked_softmax(self.config.lambda_softmax * logits, region_real, dim=-2)

    def block_relevance(self, visual: TokenBatch, text: TokenBatch) -> tuple[Tensor, Tensor]:
        """(attention α (nv, nt, Lv, Lt), relevance R (nv, nt, Lt)) of a block, in ≥ fp32."""
        acc = accumulation_dtype(visual.tokens.dtype)
        sim = token_similarities(visual, text).to(acc)
        alpha = self.attention(sim, visual.mask[:, None, :, None], text.mask[None, :, None, :])
        v = visual.tokens.to(acc)
        gram_alpha = torch.einsum("ikm,ijml->ijkl", v @ v.transpose(1, 2), alpha)  # G α per pair
        word_norm = text.tokens.to(acc).norm(dim=-1)[None, :, :]  # (1, nt, Lt)
        return alpha, _cosine_with_attended(alpha, sim, gram_alpha, word_norm)

    def paired_relevance(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """Relevance R (c, Lt) of item p with item p, in ≥ fp32."""
        acc = accumulation_dtype(visual.tokens.dtype)
        v, t = visual.tokens.to(acc), text.tokens.to(acc)
        sim = v @ t.transpose(1, 2)  # (c, Lv, Lt)
        alpha = self.attention(sim, visual.mask[:, :, None], text.mask[:, None, :])
        gram_alpha = (v @ v.transpose(1, 2)) @ alpha
        return _cosine_with_attended(alpha, sim, gram_alpha, t.norm(dim=-1))

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        return self.packed_block_scores(visual, text)

    def prepare_block(self, block: TokenBatch) -> PackedCaptions:
        # Already sorted by length (build_gallery): packed and grouped once per gallery.
        return self.pack_captions(block)

    def score_prepared_block(self, visual: TokenBatch, block: PackedCaptions) -> Tensor:
        return self.packed_scores(visual, block)

    def pack_captions(self, text: TokenBatch) -> PackedCaptions:
        """The captions' real words packed, shortest captions first, with what the packed path
        reads of them (see PackedCaptions)."""
        acc = accumulation_dtype(text.tokens.dtype)
        sorting = text.mask.sum(1).argsort(stable=True)
        # Aligner.forward sorts captions by length already: then no reordering is needed.
        order = None if bool((sorting[1:] > sorting[:-1]).all()) else sorting
        packed = text if order is None else text[order]
        words = packed.tokens[packed.mask].to(acc)  # (R, d): real words, shortest captions first
        lengths = packed.mask.sum(1)
        groups, counts = torch.unique_consecutive(lengths, return_counts=True)
        owner = torch.repeat_interleave(torch.arange(len(text), device=lengths.device), lengths)
        return PackedCaptions(words=words, word_norm=words.norm(dim=-1), owner=owner, counts=lengths,
                              groups=tuple(zip(groups.tolist(), counts.tolist(), strict=True)),
                              restore=None if order is None else order.argsort())  # fmt: skip

    def padded_block_scores(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(nv, nt) scores from every pair's padded (Lv, Lt) block (the reference for the packed path)."""
        _, relevance = self.block_relevance(visual, text)
        return self._pool(relevance, text.mask[None, :, :]).to(visual.tokens.dtype)

    def packed_block_scores(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(nv, nt) scores with the captions' real words packed and grouped by length (module docstring)."""
        return self.packed_scores(visual, self.pack_captions(text))

    def packed_scores(self, visual: TokenBatch, text: PackedCaptions) -> Tensor:
        """`packed_block_scores` of captions packed by `pack_captions`."""
        cfg = self.config
        acc = accumulation_dtype(visual.tokens.dtype)
        words = text.words.to(acc)
        v = visual.tokens.to(acc)
        nv, lv, dim = v.shape
        sim = (v.reshape(nv * lv, dim) @ words.T).view(nv, lv, len(words))  # the real-token product
        inplace = not (torch.is_grad_enabled() and sim.requires_grad)
        # Logits in base 2 (λ·ŝ·log₂e): exp2 costs half of exp here and gives the same α.
        if cfg.scan_norm:
            logits = self._scan_logits(sim, text.groups, LOG2_E * cfg.lambda_softmax, inplace)
        else:
            logits = (LOG2_E * cfg.lambda_softmax) * sim
        if not bool(visual.mask.all()):
            logits = logits.masked_fill(~visual.mask[:, :, None], float("-inf"))
        if not (cfg.scan_norm and cfg.lambda_softmax <= UNSHIFTED_LAMBDA):
            logits = logits - logits.amax(1, keepdim=True)
        attention = logits.exp2_() if inplace else logits.exp2()  # α up to the softmax denominator Z
        # G α and Z = Σ_r e in one product: the Gram matrix with a row of ones below it.
        gram = torch.cat([v @ v.transpose(1, 2), v.new_ones(nv, 1, lv)], 1)
        spread = torch.bmm(gram, attention)  # (nv, lv + 1, R)
        total = spread[:, lv]
        dot = (sim.mul_(attention) if inplace else sim * attention).sum(1) / total  # word · a_w
        spread = spread[:, :lv]
        quadratic = (spread.mul_(attention) if inplace else spread * attention).sum(1)  # Σ e (G e)
        attended_norm = (quadratic / total.square()).clamp_min(NORM_EPS**2).sqrt()  # ‖a_w‖ = √(αᵀGα)
        relevance = dot / (attended_norm * text.word_norm.to(acc)).clamp_min(NORM_EPS)  # (nv, R)
        scores = segment_pool(relevance, text.owner, len(text.counts), cfg.pooling, cfg.temperature,
                              counts=text.counts)  # fmt: skip
        scores = scores if text.restore is None else scores[:, text.restore]
        return scores.to(visual.tokens.dtype)

    def _scan_logits(self, sim: Tensor, groups: tuple[tuple[int, int], ...], lam: float, inplace: bool) -> Tensor:
        """lam · leaky_relu(s) / ‖leaky_relu(s)‖ over each caption's words, for sim (nv, Lv, R) whose
        words are packed caption after caption in runs of (length, captions) `groups`: each run of
        equal-length captions is a regular (nv, Lv, captions, L) view, normalised with a broadcast."""
        clipped = F.leaky_relu(sim, LEAKY_SLOPE)
        nv, lv, _ = sim.shape
        scales, start = [], 0
        for length, count in groups:
            group = clipped[:, :, start : start + length * count].view(nv, lv, count, length)
            # Σ over a short last axis as a matrix–vector product (3× faster than a reduction here).
            # (clamped before the root: a zero row — a padded region — then has gradient 0, not NaN)
            norm = (group.square() @ group.new_ones(length)).clamp_min(NORM_EPS**2).sqrt()
            scale = (lam / norm)[..., None]
            if inplace:
                group.mul_(scale)
            else:
                scales.append(scale.expand(nv, lv, count, length).reshape(nv, lv, count * length))
            start += length * count
        return clipped if inplace else clipped * torch.cat(scales, 2)

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        # Item p with item p only: (c, Lv, Lt) instead of the c × c block.
        return self._pool(self.paired_relevance(visual, text), text.mask).to(visual.tokens.dtype)

    def _pool(self, relevance: Tensor, word_mask: Tensor) -> Tensor:
        return pool_masked(relevance, word_mask, -1, self.config.pooling, self.config.temperature)

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """weights[w, r] = α(r | w), the attention of each real word over the real regions."""
        visual, text = self.prepare_pair(visual, text)
        alpha, _ = self.block_relevance(visual, text)
        weights = alpha[0, 0][visual.mask[0]][:, text.mask[0]].T.detach()  # (Lt, Lv)
        score = self.score_block(visual, text)[0, 0]
        best = weights.argmax(dim=1)
        return TokenAlignment(weights=weights, word_to_region=best, score=float(score.detach()))


@dataclass(frozen=True, eq=False)
class PackedCaptions:
    """Captions as the packed path reads them: words (R, d) their real words in ≥ fp32, shortest
    captions first, word_norm (R,), owner (R,) each word's caption in that order, counts (N,) real
    words per caption in that order, groups the runs of (length, captions) of equal length,
    restore the permutation back to the given caption order (None: it was sorted already)."""

    words: Tensor
    word_norm: Tensor
    owner: Tensor
    counts: Tensor
    groups: tuple[tuple[int, int], ...]
    restore: Tensor | None


def _cosine_with_attended(alpha: Tensor, sim: Tensor, gram_alpha: Tensor, word_norm: Tensor) -> Tensor:
    """cos(word_w, a_w) per word (..., Lt) without forming a_w = Σ_r α(r | w) region_r:
    word · a_w = Σ_r α s(r, w) and ‖a_w‖² = αᵀ G α (gram_alpha = G α)."""
    dot = (alpha * sim).sum(-2)
    attended_norm = (alpha * gram_alpha).sum(-2).clamp_min(NORM_EPS**2).sqrt()
    return dot / (attended_norm * word_norm).clamp_min(NORM_EPS)

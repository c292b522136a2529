"""Hard alignment, CHAN-style: each word keeps only its most relevant region; the rest is dropped.

score(text direction) = pool over real words w of max over real regions r of s(w, r)
score(visual direction) = pool over real regions r of max over real words w of s(w, r)
"both" averages the two. s is the cosine when `normalize` is on (the default).

pool is `mean`, `lse`: τ · log Σ exp(x / τ) over the real entries (τ = temperature, default 0.1),
or `lse_chan`: log Σ exp(x / β) with β = temperature — CHAN's own `LSEPooling` (lib/coding.py),
which has no β factor, so its scores are 1/β times `lse`'s (10× at β = 0.1): same ranking, but a
triplet margin means something else (CHAN trains with margin 0.05 on this scale). The `chan`
method preset selects `lse_chan`. With mean pooling this is exactly `mean_max`; both names are
kept because they are different framings (CHAN's hard alignment vs ColBERT's MaxSim).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from finealign.aligners.base import (
    PackedBlock,
    TokenAlignment,
    best_region_alignment,
    masked_fill_pairs,
    paired_token_similarities,
    token_similarities,
    word_best,
)
from finealign.aligners.kernel_backed import KernelAligner, KernelConfig
from finealign.aligners.pooling import check_pooling, pool_masked, segment_pool
from finealign.errors import ConfigError
from finealign.kernels import maxsim_scores
from finealign.kernels.checks import DIRECTIONS  # "text", "visual", "both": the kernels' directions
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch


@dataclass
class HardConfig(KernelConfig):
    pooling: str = "lse"  # "mean" | "lse" (τ·LSE(x/τ)) | "lse_chan" (CHAN's LSE(x/β), no β factor)
    temperature: float = 0.1  # τ (β) of the LogSumExp pooling
    # "text": word → best region; "visual": region → best word; "both": the mean of the two.
    direction: str = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pooling(self.pooling, self.temperature)
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")


@ALIGNERS.register("hard")
class HardAligner(KernelAligner[HardConfig]):
    """Each word keeps only its best region, pooled by mean or τ·LSE (CHAN-style; CHAN's own form is method=chan)."""

    Config = HardConfig

    def kernel_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
        cfg = self.config
        # The kernels pool τ·LSE; CHAN's form is that divided by τ.
        pooling = "lse" if cfg.pooling == "lse_chan" else cfg.pooling
        scores = maxsim_scores(
            visual.tokens,
            visual.mask,
            text.tokens,
            text.mask,
            pooling,
            cfg.direction,
            cfg.temperature,
            backend="triton",
            pairs=pairs,
        )
        return scores / cfg.temperature if cfg.pooling == "lse_chan" else scores

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        return self.score_prepared_block(visual, self.prepare_block(text))

    def prepare_block(self, block: TokenBatch) -> TokenBatch | PackedBlock:
        # CHAN's direction reads each caption's real words packed: packed once per gallery.
        return PackedBlock.of(block) if self.config.direction == "text" else block

    def score_prepared_block(self, visual: TokenBatch, block: TokenBatch | PackedBlock) -> Tensor:
        if isinstance(block, PackedBlock):  # the real words only (no padded products)
            best = word_best(visual, block.words)
            cfg = self.config
            scores = segment_pool(best, block.owner, len(block), cfg.pooling, cfg.temperature, counts=block.counts)
            return scores.to(best.dtype)
        sim = masked_fill_pairs(token_similarities(visual, block), visual.mask, block.mask, float("-inf"))
        return self._reduce(sim, visual.mask[:, None, :], block.mask[None, :, :])

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        # Item p with item p only: (c, Lv, Lt) instead of the c × c block.
        return self._reduce(paired_token_similarities(visual, text, float("-inf")), visual.mask, text.mask)

    def _reduce(self, sim: Tensor, visual_mask: Tensor, text_mask: Tensor) -> Tensor:
        """Scores from masked similarities (..., Lv, Lt) (padding = -inf); masks broadcast to (..., L)."""
        cfg = self.config
        parts = []
        if cfg.direction in ("text", "both"):
            word_best = sim.amax(dim=-2)  # (..., Lt): each word keeps its best region
            parts.append(pool_masked(word_best, text_mask, -1, cfg.pooling, cfg.temperature))
        if cfg.direction in ("visual", "both"):
            region_best = sim.amax(dim=-1)  # (..., Lv): each region keeps its best word
            parts.append(pool_masked(region_best, visual_mask, -1, cfg.pooling, cfg.temperature))
        score = parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1])
        return score.to(sim.dtype)

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """One-hot word → region weights (each word's kept region), whatever the direction."""
        visual, text = self.prepare_pair(visual, text)
        return best_region_alignment(self, visual, text, 1.0)

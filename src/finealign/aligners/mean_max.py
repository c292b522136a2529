"""Token-wise interaction (ColBERT MaxSim / FILIP / DRL "TI")."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from finealign.aligners.base import (
    Aligner,
    AlignerConfig,
    TokenAlignment,
    masked_fill_pairs,
    masked_mean,
    token_similarities,
)
from finealign.errors import ConfigError
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch


@dataclass
class MeanMaxConfig(AlignerConfig):
    # "text": each word takes its best region, averaged over words (ColBERT/FILIP t2v);
    # "both": the mean of that and the region→word direction (FILIP / DRL bidirectional).
    direction: str = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in ("text", "both"):
            raise ConfigError(f"direction must be 'text' or 'both', got {self.direction!r}")


@ALIGNERS.register("mean_max")
class MeanMaxAligner(Aligner):
    """Mean over words of the max over regions (ColBERT/FILIP/DRL token-wise interaction)."""

    Config = MeanMaxConfig

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf"))
        word_best = sim.amax(dim=2)  # (nv, nt, Lt): best region per word
        score = masked_mean(word_best, text.mask[None, :, :], dim=2)
        if self.config.direction == "both":
            region_best = sim.amax(dim=3)  # (nv, nt, Lv): best word per region
            score = 0.5 * (score + masked_mean(region_best, visual.mask[:, None, :], dim=2))
        return score

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        visual, text = self.prepare_pair(visual, text)
        v = visual.tokens[0][visual.mask[0]]
        t = text.tokens[0][text.mask[0]]
        sim = t @ v.T  # (Lt, Lv)
        best = sim.argmax(dim=1)
        weights = sim.new_zeros(sim.shape)
        weights[range(len(best)), best] = 1.0 / len(best)
        score = self.score_block(visual, text)[0, 0]
        return TokenAlignment(weights=weights, word_to_region=best, score=float(score))

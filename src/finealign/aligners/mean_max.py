"""Token-wise interaction (ColBERT MaxSim / FILIP; with options DRL's "TI" and TGDT's local similarity).

score = scale · pool over real words of (max over real regions of s(word, region)), pool = mean
(ColBERT/FILIP/DRL) or sum (TGDT: 10 · Σ_words max_regions, `word_pooling: sum`, `scale: 10`).
direction "both" averages with the region → word direction (DRL's bidirectional TI).
Padding is masked exactly unless `zero_pad_text` / `zero_pad_visual` ask for DRL's fixed-length
zero padding, under which a max over a padded item is max(best real, 0) (aligners/zero_padding.py);
`method=drl_ti` selects both directions and that padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from finealign.aligners.base import (
    PackedBlock,
    TokenAlignment,
    best_region_alignment,
    masked_fill_pairs,
    masked_mean,
    paired_token_similarities,
    token_similarities,
    word_best,
)
from finealign.aligners.kernel_backed import KernelAligner, KernelConfig
from finealign.aligners.pooling import segment_pool
from finealign.aligners.zero_padding import check_zero_padding, floor_at_zero_padding, has_zero_slots
from finealign.errors import ConfigError
from finealign.kernels import maxsim_scores
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch


@dataclass
class MeanMaxConfig(KernelConfig):
    # "text": each word takes its best region, averaged over words (ColBERT/FILIP t2v);
    # "both": the mean of that and the region→word direction (FILIP / DRL bidirectional).
    direction: str = "text"
    word_pooling: str = "mean"  # "mean" over real words, or "sum" (TGDT's local score; text direction)
    scale: float = 1.0  # multiplies the score (TGDT: 10)
    # DRL's fixed-length zero padding (aligners/zero_padding.py; null: exact masking): each caption
    # counts as padded to zero_pad_text slots and each visual item to zero_pad_visual slots, and a
    # max over an item with padded slots includes their similarity 0 (DRL: max_words 32, max_frames 12).
    zero_pad_text: int | None = None
    zero_pad_visual: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in ("text", "both"):
            raise ConfigError(f"direction must be 'text' or 'both', got {self.direction!r}")
        if self.word_pooling not in ("mean", "sum"):
            raise ConfigError(f"word_pooling must be 'mean' or 'sum', got {self.word_pooling!r}")
        if self.word_pooling == "sum" and self.direction != "text":
            raise ConfigError("word_pooling='sum' (TGDT's local score) is defined for direction='text' only")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0:
            raise ConfigError(f"scale must be a positive number, got {self.scale!r}")
        check_zero_padding(self.zero_pad_visual, self.zero_pad_text, self.direction)


@ALIGNERS.register("mean_max")
class MeanMaxAligner(KernelAligner[MeanMaxConfig]):
    """Mean over words of the max over regions (ColBERT/FILIP MaxSim; DRL's TI is method=drl_ti)."""

    Config = MeanMaxConfig

    def _kernel_applies(self, visual: TokenBatch, text: TokenBatch, has_backward: bool) -> bool:
        # The fused kernel masks padding exactly: DRL's zero slots, when some item has them, take
        # the torch path.
        cfg = self.config
        if has_zero_slots(visual, cfg.zero_pad_visual) or has_zero_slots(text, cfg.zero_pad_text):
            return False
        return super()._kernel_applies(visual, text, has_backward)

    def kernel_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
        scores = maxsim_scores(
            visual.tokens,
            visual.mask,
            text.tokens,
            text.mask,
            "mean",
            self.config.direction,
            backend="triton",
            pairs=pairs,
        )
        if self.config.word_pooling == "sum":  # the kernel's mean times each caption's real words
            words = text.mask.sum(1).to(scores.dtype)
            scores = scores * (words if pairs is None else words[pairs[:, 1]])
        return self.config.scale * scores

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        return self.score_prepared_block(visual, self.prepare_block(text))

    def prepare_block(self, block: TokenBatch) -> TokenBatch | PackedBlock:
        # The text direction reads each caption's real words packed: packed once per gallery.
        return PackedBlock.of(block) if self.config.direction == "text" else block

    def score_prepared_block(self, visual: TokenBatch, block: TokenBatch | PackedBlock) -> Tensor:
        if isinstance(block, PackedBlock):
            return self._packed_text_scores(visual, block)
        sim = masked_fill_pairs(token_similarities(visual, block), visual.mask, block.mask, float("-inf"))
        return self._reduce(sim, visual.mask[:, None, :], block.mask[None, :, :])

    def _packed_text_scores(self, visual: TokenBatch, text: PackedBlock) -> Tensor:
        """Word → best region with the captions' real words packed into one matrix: one product of
        every region with every *real* word (no padded word positions multiplied), the max over
        regions, then each caption's words summed back by index. Same scores as the padded path."""
        best = word_best(visual, text.words)
        best = floor_at_zero_padding(best, visual.mask, self.config.zero_pad_visual)
        scores = segment_pool(best, text.owner, len(text), self.config.word_pooling, 1.0, counts=text.counts)
        return (self.config.scale * scores).to(best.dtype)

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        # Paired form: item p with item p only, (c, Lv, Lt) instead of the c × c block.
        sim = paired_token_similarities(visual, text, float("-inf"))
        return self._reduce(sim, visual.mask, text.mask)

    def _reduce(self, sim: Tensor, visual_mask: Tensor, text_mask: Tensor) -> Tensor:
        """Scores from masked similarities (..., Lv, Lt) (padding = -inf); masks broadcast to (..., L)."""
        word_best = sim.amax(dim=-2)  # (..., Lt): best region per word
        word_best = floor_at_zero_padding(word_best, visual_mask, self.config.zero_pad_visual)
        score = masked_mean(word_best, text_mask, dim=-1)
        if self.config.word_pooling == "sum":
            score = score * text_mask.expand_as(word_best).sum(-1).to(score.dtype)
        if self.config.direction == "both":
            region_best = sim.amax(dim=-1)  # (..., Lv): best word per region
            region_best = floor_at_zero_padding(region_best, text_mask, self.config.zero_pad_text)
            score = 0.5 * (score + masked_mean(region_best, visual_mask, dim=-1))
        return self.config.scale * score

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        visual, text = self.prepare_pair(visual, text)
        words = int(text.mask[0].sum())
        return best_region_alignment(self, visual, text, 1.0 / words if self.config.word_pooling == "mean" else 1.0)

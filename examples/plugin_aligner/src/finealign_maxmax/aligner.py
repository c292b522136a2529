"""A plugin aligner: no finealign code changes, only an entry point in pyproject.toml."""

from __future__ import annotations

from finealign.aligners.base import Aligner, masked_fill_pairs, token_similarities


class MaxMaxAligner(Aligner):
    """Similarity of the single best (region, word) pair (an example plugin)."""

    def score_block(self, visual, text):
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf"))
        return sim.amax(dim=(2, 3))
